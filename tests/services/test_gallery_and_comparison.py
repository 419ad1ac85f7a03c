"""Galleries, thumbnails, model comparisons and the score chart, below the web view.

Stores are built with ``tests/store_helpers`` (model and image rows, caption jobs, rows written as
a worker writes them), on SQLite and PostgreSQL where the test reads SQL the two could answer
differently (pagination, filters, joins).
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine

from tests import store_helpers as jobs
from tests.store_helpers import error, ok
from vicap_jobs.data.text import normalize
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import ReferenceCaption
from vicap_jobs.errors import InputError, NotFoundError
from vicap_jobs.services.captioning import register_folder_images
from vicap_jobs.services.comparison import compare_jobs, compare_models
from vicap_jobs.services.gallery import GalleryPage, job_gallery, thumbnail_file
from vicap_jobs.web.charts import Series, line_chart

# --------------------------------------------------------------------------- galleries


def five_caption_job(db: Engine, folder: Path) -> tuple[int, list[int]]:
    """A caption job over five images: ok, error, ok, ok, error (in image order)."""
    images = jobs.add_images(db, folder, 5)
    job_id, _ = jobs.caption_job(db, images, chunk_size=5, model_id=jobs.add_model(db))
    jobs.write(
        db,
        job_id,
        [ok(images[0], "một"), error(images[1]), ok(images[2], "hai"), ok(images[3], "ba"), error(images[4])],
    )
    return job_id, images


@pytest.mark.parametrize(
    ("matching", "per_page", "pages"), [(0, 48, 1), (1, 48, 1), (48, 48, 1), (49, 48, 2), (5, 2, 3)]
)
def test_page_count_rounds_up_and_is_at_least_one(matching: int, pages: int, per_page: int) -> None:
    """GalleryPage.pages is ceil(matching / per_page), and 1 for an empty gallery."""
    assert GalleryPage(job_id=1, status="all", page=1, per_page=per_page, matching=matching).pages == pages


def test_gallery_pages_through_the_captions_in_image_order(any_db: Engine, tmp_path: Path) -> None:
    """per_page=2 over five rows: pages of 2, 2, 1 in image order, then an empty page; ``matching`` counts all."""
    job_id, images = five_caption_job(any_db, tmp_path / "photos")
    pages = [job_gallery(db=any_db, job_id=job_id, page=n, per_page=2) for n in (1, 2, 3, 4)]
    assert [[item.image_id for item in p.items] for p in pages] == [images[0:2], images[2:4], images[4:5], []]
    assert all(p.matching == 5 and p.pages == 3 for p in pages)
    first = pages[0].items[0]
    assert (first.file_name, first.status, first.caption, first.error, first.engine) == (
        "img000.png",
        "ok",
        "một",
        None,
        "torch",
    )
    assert pages[0].items[1].status == "error" and pages[0].items[1].caption is None
    assert pages[0].items[1].error == "cannot read image: broken"


def test_gallery_clamps_page_and_page_size(any_db: Engine, tmp_path: Path) -> None:
    """page 0 is page 1; per_page 0 is 1; per_page past 500 is 500."""
    job_id, images = five_caption_job(any_db, tmp_path / "photos")
    assert [i.image_id for i in job_gallery(db=any_db, job_id=job_id, page=0, per_page=2).items] == images[:2]
    tiny = job_gallery(db=any_db, job_id=job_id, page=1, per_page=0)
    assert (tiny.per_page, len(tiny.items), tiny.pages) == (1, 1, 5)
    assert job_gallery(db=any_db, job_id=job_id, per_page=10_000).per_page == 500


def test_gallery_filters_by_status(any_db: Engine, tmp_path: Path) -> None:
    """status=ok / error keep only those rows, ``matching`` counting the filtered rows; other statuses are refused."""
    job_id, images = five_caption_job(any_db, tmp_path / "photos")
    good = job_gallery(db=any_db, job_id=job_id, status="ok")
    bad = job_gallery(db=any_db, job_id=job_id, status="error")
    assert [i.image_id for i in good.items] == [images[0], images[2], images[3]] and good.matching == 3
    assert [i.image_id for i in bad.items] == [images[1], images[4]] and bad.matching == 2
    assert {i.status for i in good.items} == {"ok"} and {i.status for i in bad.items} == {"error"}
    with pytest.raises(InputError, match="status must be one of"):
        job_gallery(db=any_db, job_id=job_id, status="ok' OR 1=1")


def test_gallery_of_an_unknown_job_is_not_found(any_db: Engine) -> None:
    """An unknown job id raises NotFoundError naming it."""
    with pytest.raises(NotFoundError, match="no job with id 4242"):
        job_gallery(db=any_db, job_id=4242)


# --------------------------------------------------------------------------- thumbnails


def test_two_images_with_the_same_content_share_one_thumbnail(any_db: Engine, vicap_env: Path, tmp_path: Path) -> None:
    """The cache key is the sha256: two rows of the same bytes give one file, made once; another size is another file."""
    first = tmp_path / "a" / "photo.png"
    first.parent.mkdir()
    PILImage.new("RGB", (400, 200), (10, 120, 200)).save(first)
    second = tmp_path / "b" / "copy.png"
    second.parent.mkdir()
    shutil.copy(first, second)
    id_a, id_b = register_folder_images(db=any_db, paths=[first, second])
    assert id_a != id_b

    thumb_a = thumbnail_file(db=any_db, image_id=id_a)
    thumb_b = thumbnail_file(db=any_db, image_id=id_b)

    assert thumb_a == thumb_b
    assert thumb_a.parent == vicap_env / "cache" / "thumbnails"
    assert [p.name for p in thumb_a.parent.iterdir()] == [thumb_a.name]
    with PILImage.open(thumb_a) as image:
        assert image.format == "JPEG" and image.size == (160, 80)
    larger = thumbnail_file(db=any_db, image_id=id_a, size=320)
    assert larger != thumb_a and larger.name.endswith("-320.jpg")
    with PILImage.open(larger) as image:
        assert image.size == (320, 160)


def test_different_content_gets_different_thumbnails(any_db: Engine, vicap_env: Path, tmp_path: Path) -> None:
    """Two images with different bytes never share a cache file."""
    paths = []
    for n, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        path = tmp_path / f"p{n}.png"
        PILImage.new("RGB", (30, 30), colour).save(path)
        paths.append(path)
    ids = register_folder_images(db=any_db, paths=paths)
    first, second = (thumbnail_file(db=any_db, image_id=i) for i in ids)
    assert first != second
    with PILImage.open(first) as red, PILImage.open(second) as blue:
        red_pixel, blue_pixel = red.convert("RGB").getpixel((15, 15)), blue.convert("RGB").getpixel((15, 15))
    assert isinstance(red_pixel, tuple) and isinstance(blue_pixel, tuple)
    assert red_pixel[0] > 200 and blue_pixel[2] > 200


def test_thumbnail_of_an_unknown_id_or_size_is_refused(any_db: Engine, vicap_env: Path) -> None:
    """An id not in the store is NotFoundError; a size not offered is InputError; nothing is written."""
    with pytest.raises(NotFoundError, match="no image with id 999"):
        thumbnail_file(db=any_db, image_id=999)
    with pytest.raises(InputError, match="160, 320"):
        thumbnail_file(db=any_db, image_id=1, size=10_000)
    assert not (vicap_env / "cache" / "thumbnails").exists()


# --------------------------------------------------------------------------- comparisons


def two_jobs(
    db: Engine, folder: Path, texts_a: list[str], texts_b: list[str], *, names: tuple[str, str] = ("m-a", "m-b")
) -> tuple[int, int, list[int]]:
    """Two caption jobs (models ``names``) over the same images with the given captions, both succeeded."""
    images = jobs.add_images(db, folder, len(texts_a))
    job_ids = []
    for name, texts in zip(names, (texts_a, texts_b), strict=True):
        job_id, _ = jobs.caption_job(db, images, chunk_size=len(images), model_id=jobs.add_model(db, name))
        jobs.write(db, job_id, [ok(i, t) for i, t in zip(images, texts, strict=True)])
        jobs.set_job(db, job_id, status="succeeded")
        job_ids.append(job_id)
    return job_ids[0], job_ids[1], images


def add_references(db: Engine, image_id: int, texts: list[str]) -> None:
    with session_scope(db) as session:
        for position, text in enumerate(texts):
            session.add(ReferenceCaption(image_id=image_id, position=position, text=text, normalized=normalize(text)))


def test_identical_captions_agree_fully(any_db: Engine, tmp_path: Path) -> None:
    """The same caption on both sides: agreement 1.0 on every image; labels name job and model."""
    texts = ["một con mèo trên bàn", "con chó trên cỏ xanh", "ảnh"]
    job_a, job_b, images = two_jobs(any_db, tmp_path / "p", texts, texts)
    comparison = compare_jobs(db=any_db, job_a=job_a, job_b=job_b)
    assert comparison.n_common == 3
    assert [image.agreement for image in comparison.images] == [1.0, 1.0, 1.0]
    assert comparison.label_a == f"job {job_a} · m-a" and comparison.label_b == f"job {job_b} · m-b"
    assert comparison.images[0].caption_a == comparison.images[0].caption_b


def test_disagreement_sort_puts_the_most_different_first(any_db: Engine, tmp_path: Path) -> None:
    """sort=disagreement orders by agreement ascending (ties by image id); sort=image by image id."""
    a = ["một con mèo trên bàn", "một con mèo trên bàn", "một con mèo trên bàn", "ảnh màu đỏ"]
    b = ["một con mèo trên bàn", "một con chó trên cỏ", "bức ảnh xanh", "ảnh màu đỏ"]
    job_a, job_b, images = two_jobs(any_db, tmp_path / "p", a, b)

    ordered = compare_jobs(db=any_db, job_a=job_a, job_b=job_b, sort="disagreement").images

    assert [image.image_id for image in ordered] == [images[2], images[1], images[0], images[3]]
    agreements = [image.agreement for image in ordered]
    assert agreements == sorted(agreements) and agreements[0] == 0.0 and 0.0 < agreements[1] < 1.0
    by_image = compare_jobs(db=any_db, job_a=job_a, job_b=job_b, sort="image").images
    assert [image.image_id for image in by_image] == images
    assert len(compare_jobs(db=any_db, job_a=job_a, job_b=job_b, limit=2).images) == 2
    with pytest.raises(InputError, match="sort must be one of"):
        compare_jobs(db=any_db, job_a=job_a, job_b=job_b, sort="random")


def test_scores_are_none_without_references(any_db: Engine, tmp_path: Path) -> None:
    """Ad-hoc images have no references: no side scores, gap 0, no means."""
    job_a, job_b, _ = two_jobs(any_db, tmp_path / "p", ["một con mèo"], ["con chó"])
    comparison = compare_jobs(db=any_db, job_a=job_a, job_b=job_b)
    (image,) = comparison.images
    assert (image.references, image.scores_a, image.scores_b, image.gap) == ([], None, None, 0.0)
    assert comparison.has_references is False
    assert comparison.mean("a", "bleu_4") is None


def test_a_caption_equal_to_its_reference_scores_bleu4_of_one(any_db: Engine, tmp_path: Path) -> None:
    """With references, side A (the reference itself) has BLEU-4 ≈ 1 and ROUGE-L 1; sort=gap puts that image first."""
    reference = "một con mèo nằm trên bàn gỗ"
    job_a, job_b, images = two_jobs(
        any_db, tmp_path / "p", [reference, "con chó chạy"], ["con chó chạy trên cỏ", "con chó chạy"]
    )
    add_references(any_db, images[0], [reference, "con mèo trên bàn"])
    add_references(any_db, images[1], ["con chó chạy trên cỏ xanh"])

    comparison = compare_jobs(db=any_db, job_a=job_a, job_b=job_b, sort="gap")

    first = comparison.images[0]
    assert first.image_id == images[0]
    assert first.references == [reference, "con mèo trên bàn"]
    assert first.scores_a is not None and first.scores_b is not None
    assert first.scores_a.bleu_4 == pytest.approx(1.0, abs=1e-6)
    assert first.scores_a.rouge_l == pytest.approx(1.0)
    assert first.scores_b.bleu_4 < 0.1 and first.gap > 0.9
    assert comparison.has_references is True
    mean_a = comparison.mean("a", "bleu_4")
    assert mean_a is not None and 0.5 < mean_a < 1.0


def test_compare_models_uses_their_jobs_on_shared_images(any_db: Engine, tmp_path: Path) -> None:
    """compare_models finds the two models' succeeded jobs over the same images."""
    job_a, job_b, _ = two_jobs(any_db, tmp_path / "p", ["ảnh đỏ", "ảnh xanh"], ["ảnh đỏ", "con mèo"])
    comparison = compare_models(db=any_db, model_a="m-a", model_b="m-b")
    assert (comparison.job_a, comparison.job_b, comparison.n_common) == (job_a, job_b, 2)
    with pytest.raises(InputError, match="two different models"):
        compare_models(db=any_db, model_a="m-a", model_b="m-a")


def test_compare_models_without_shared_images_names_both(any_db: Engine, tmp_path: Path) -> None:
    """Two models whose jobs captioned different images: NotFoundError naming both models."""
    for name, folder in (("left-model", "l"), ("right-model", "r")):
        images = jobs.add_images(any_db, tmp_path / folder, 2)
        job_id, _ = jobs.caption_job(any_db, images, chunk_size=2, model_id=jobs.add_model(any_db, name))
        jobs.write(any_db, job_id, [ok(i) for i in images])
        jobs.set_job(any_db, job_id, status="succeeded")
    with pytest.raises(NotFoundError) as missing:
        compare_models(db=any_db, model_a="left-model", model_b="right-model")
    assert "'left-model'" in str(missing.value) and "'right-model'" in str(missing.value)
    with pytest.raises(NotFoundError):
        compare_models(db=any_db, model_a="left-model", model_b="no-such-model")


def test_comparing_a_train_job_is_an_input_error(any_db: Engine, tmp_path: Path) -> None:
    """A train job has no captions: InputError saying which kinds compare; an unknown job is NotFoundError."""
    train = jobs.new_job(any_db, "train", params={"name": "m", "family": "cnn-lstm", "dataset": "d", "options": {}})
    job_a, _, _ = two_jobs(any_db, tmp_path / "p", ["ảnh"], ["ảnh"])
    with pytest.raises(InputError, match=f"job {train} is a train job"):
        compare_jobs(db=any_db, job_a=job_a, job_b=train)
    with pytest.raises(NotFoundError, match="no job with id 98765"):
        compare_jobs(db=any_db, job_a=98765, job_b=job_a)


# --------------------------------------------------------------------------- the score chart

VIEW = re.compile(r'viewBox="0 0 (\d+) (\d+)"')
POLYLINE = re.compile(r'<polyline class="series" data-series="([^"]*)" points="([^"]*)"')


def polylines(svg: str) -> dict[str, list[tuple[float, float]]]:
    return {
        name: [(float(x), float(y)) for x, y in (pair.split(",") for pair in points.split())]
        for name, points in POLYLINE.findall(svg)
    }


def test_chart_points_are_polyline_coordinates_inside_the_view() -> None:
    """Each series is a polyline through its points in time order, inside the viewBox; higher scores are higher up."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    bleu = Series("BLEU-4", [(start + timedelta(days=2), 0.30), (start, 0.10), (start + timedelta(days=1), 0.20)])
    rouge = Series("ROUGE-L", [(start, 0.40), (start + timedelta(days=2), 0.50)], dashed=True)

    svg = str(line_chart([bleu, rouge], width=640, height=260, title="scores"))

    width, height = (int(v) for v in VIEW.search(svg).groups())  # type: ignore[union-attr]
    lines = polylines(svg)
    assert set(lines) == {"BLEU-4", "ROUGE-L"}
    for coords in lines.values():
        assert all(0 <= x <= width and 0 <= y <= height for x, y in coords)
    xs = [x for x, _ in lines["BLEU-4"]]
    ys = [y for _, y in lines["BLEU-4"]]
    assert xs == sorted(xs) and len(set(xs)) == 3  # sorted by time
    assert ys[0] > ys[1] > ys[2]  # 0.10 < 0.20 < 0.30: lower on the page is a larger y
    assert xs[0] == lines["ROUGE-L"][0][0] and xs[-1] == lines["ROUGE-L"][-1][0]  # one time axis
    assert svg.count('stroke-dasharray="5 4"') == 1
    assert svg.count("<circle") == 5


def test_a_single_point_sits_in_the_middle() -> None:
    """One evaluation: its point is at the horizontal middle of the plot."""
    svg = str(line_chart([Series("BLEU-4", [(datetime(2026, 1, 1, tzinfo=UTC), 0.5)])], width=640))
    ((x, _),) = polylines(svg)["BLEU-4"]
    assert x == pytest.approx(48 + (640 - 48 - 16) / 2, abs=0.1)


def test_chart_labels_are_escaped() -> None:
    """Series names, the title and the y label with markup appear escaped, never as tags."""
    when = datetime(2026, 1, 1, tzinfo=UTC)
    svg = str(
        line_chart(
            [Series('<script>alert(1)</script>" onload="x', [(when, 0.2)])],
            title="<img src=x onerror=alert(2)>",
            y_label="<b>score</b>",
        )
    )
    assert "<script>" not in svg and "<img" not in svg and "<b>" not in svg
    assert '" onload="x' not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    assert "&lt;img src=x onerror=alert(2)&gt;" in svg and "&lt;b&gt;score&lt;/b&gt;" in svg


@pytest.mark.parametrize("series", [[], [Series("BLEU-4", [])]])
def test_an_empty_chart_says_no_evaluations_yet(series: list[Series]) -> None:
    """No points: the chart frame with "no evaluations yet" and no polyline."""
    svg = str(line_chart(series, title="t"))
    assert "no evaluations yet" in svg
    assert "<polyline" not in svg and svg.startswith("<svg") and svg.endswith("</svg>")
