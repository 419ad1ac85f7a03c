"""``dataset import`` with the captions file and the photos in object storage (a real SeaweedFS server)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image as PILImage
from sqlalchemy import Engine, select

from vicap_jobs.cli.main import cli
from vicap_jobs.data.images import Preprocessing, load_rgb
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Image
from vicap_jobs.services.datasets import describe_dataset, import_file, load_samples
from vicap_jobs.storage.objects import write_bytes

CAPTIONS = ["Một cầu thủ đang đá bóng", "Hai người chơi quần vợt", "Một cô gái cầm vợt", "Đội bóng chuyền"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="vicap-jobs")


def png(i: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (20 + i, 12), (60 * i % 256, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def bucket_set(s3_bucket: str) -> tuple[str, dict[str, bytes]]:
    """A COCO test file at s3://B/ann/ naming 4 photos under s3://B/photos/, one of them (img3) absent."""
    photos = {f"img{i}.png": png(i) for i in range(3)}
    photos["sub/img4.png"] = png(4)
    for name, data in photos.items():
        write_bytes(f"{s3_bucket}/photos/{name}", data)
    names = ["img0.png", "img1.png", "img3.png", "sub/img4.png"]
    coco = {
        "images": [{"id": 10 + i, "file_name": name, "width": 99, "height": 12} for i, name in enumerate(names)],
        "annotations": [{"id": i, "image_id": 10 + i, "caption": text} for i, text in enumerate(CAPTIONS)],
    }
    write_bytes(f"{s3_bucket}/ann/captions_test.json", json.dumps(coco, ensure_ascii=False).encode())
    return s3_bucket, photos


def test_cli_import_from_urls_records_object_urls_digests_and_missing_objects(
    vicap_env: Path, bucket_set: tuple[str, dict[str, bytes]]
) -> None:
    bucket, photos = bucket_set
    result = invoke(
        "dataset", "import", "remote", "--format", "coco", "--split", "test",
        "--annotations", f"{bucket}/ann/captions_test.json", "--images", f"{bucket}/photos/",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "imported 4 images and 4 captions into 'remote' (test)" in result.output
    assert "1 image files are missing" in result.output and f"{bucket}/photos/img3.png" in result.output

    from vicap_jobs.cli.common import open_store

    _, db = open_store()
    with session_scope(db) as session:
        rows = {r.file_name: (r.path, r.sha256, r.width) for r in session.scalars(select(Image))}
    assert rows["img0.png"] == (f"{bucket}/photos/img0.png", hashlib.sha256(photos["img0.png"]).hexdigest(), 99)
    assert rows["sub/img4.png"][0] == f"{bucket}/photos/sub/img4.png" and rows["sub/img4.png"][1] is not None
    assert rows["img3.png"][1] is None  # missing: no digest, like a missing local file
    (split,) = describe_dataset(db=db, name="remote").splits
    assert (split.n_images, split.n_missing_files) == (4, 1)


def test_samples_of_a_url_data_set_keep_urls_and_their_pixels_load(
    vicap_env: Path, bucket_set: tuple[str, dict[str, bytes]], sqlite_db: Engine
) -> None:
    """load_samples keeps an object's URL as text (never Path("s3://…")); training's pixel loader reads it."""
    from vicap_jobs.training.features import load_pixels

    bucket, _ = bucket_set
    annotations = f"{bucket}/ann/captions_test.json"
    import_file(db=sqlite_db, name="r", annotations=annotations, images_dir=f"{bucket}/photos", split="test")
    samples = load_samples(db=sqlite_db, dataset="r", split="test")
    assert [s.image_path for s in samples] == [f"{bucket}/photos/{n}" for n in ("img0.png", "img1.png", "sub/img4.png")]
    assert [s.captions for s in samples] == [(CAPTIONS[0],), (CAPTIONS[1],), (CAPTIONS[3],)]
    assert load_rgb(samples[0].image_path).size == (20, 12)
    assert tuple(load_pixels(samples, Preprocessing(size=16)).shape) == (3, 3, 16, 16)


def test_images_default_to_the_captions_files_prefix_and_the_sniffer_reads_urls(
    s3_bucket: str, sqlite_db: Engine
) -> None:
    """A CSV with a split column next to its photos: format told from the content, split from the column."""
    write_bytes(f"{s3_bucket}/set/a.png", png(1))
    write_bytes(f"{s3_bucket}/set/b.png", png(2))
    write_bytes(f"{s3_bucket}/set/captions.csv", "file,caption,split\na.png,một,train\nb.png,hai,val\n".encode())
    reports = import_file(db=sqlite_db, name="c", annotations=f"{s3_bucket}/set/captions.csv")
    assert [(r.split, r.n_images, r.n_missing) for r in reports] == [("train", 1, 0), ("val", 1, 0)]
    (sample,) = load_samples(db=sqlite_db, dataset="c", split="val")
    assert sample.image_path == f"{s3_bucket}/set/b.png"


def test_the_split_comes_from_a_urls_file_name(s3_bucket: str, sqlite_db: Engine) -> None:
    coco = {"images": [{"id": "x", "file_name": "x.png"}], "annotations": [{"image_id": "x", "caption": "một"}]}
    write_bytes(f"{s3_bucket}/uit-openviic-dev.json", json.dumps(coco).encode())
    (report,) = import_file(db=sqlite_db, name="o", annotations=f"{s3_bucket}/uit-openviic-dev.json")
    assert (report.split, report.n_missing) == ("val", 1)


def test_url_import_errors_are_one_line(vicap_env: Path, bucket_set: tuple[str, dict[str, bytes]]) -> None:
    bucket, _ = bucket_set
    base = ["dataset", "import", "x", "--split", "test", "--images", f"{bucket}/photos"]
    required = invoke(*base, "--annotations", f"{bucket}/ann/captions_test.json", "--require-images")
    assert required.exit_code == 1 and "1 of 4 images are missing" in required.output
    absent = invoke(*base, "--annotations", f"{bucket}/ann/nope.json")
    assert absent.exit_code == 1
    assert absent.output.strip() == f"Error: {bucket}/ann/nope.json: file not found"
    inline = invoke(*base, "--annotations", "s3://KEY:hush-hush@bucket/captions.json")
    assert inline.exit_code == 1 and "hush-hush" not in inline.output and "AWS_* variables" in inline.output
    for result in (required, absent, inline):
        assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.slow
def test_a_data_set_in_object_storage_trains_and_evaluates(
    vicap_env: Path, s3_bucket: str, sqlite_db: Engine, tmp_path: Path
) -> None:
    """The synthetic set uploaded to the bucket, imported by URL: a cnn-lstm trains on it and is evaluated on it."""
    from vicap_jobs.data.synth import generate_synth
    from vicap_jobs.services.evaluation import evaluate_model
    from vicap_jobs.services.runs import run_job
    from vicap_jobs.services.training import create_train_job

    synth = generate_synth(tmp_path / "synth", n_images=40, seed=1, size=32)
    for split, folder in synth.image_dirs.items():
        for path in sorted(folder.iterdir()):
            write_bytes(f"{s3_bucket}/synth/images/{split}/{path.name}", path.read_bytes())
        write_bytes(f"{s3_bucket}/synth/captions_{split}.json", synth.annotations[split].read_bytes())
        import_file(
            db=sqlite_db,
            name="remote",
            fmt="coco",
            split=split,
            annotations=f"{s3_bucket}/synth/captions_{split}.json",
            images_dir=f"{s3_bucket}/synth/images/{split}",
            require_images=True,
        )
    options = {"epochs": 1, "image_size": 32, "batch_size": 16}
    job_id = create_train_job(db=sqlite_db, name="from-s3", family="cnn-lstm", dataset="remote", options=options)
    trained = run_job(db=sqlite_db, job_id=job_id)
    assert trained.ok, trained
    result = evaluate_model(db=sqlite_db, model="from-s3", dataset="remote", split="test", engine_name="torch")
    assert result.scores.n_images == synth.counts["test"]
    with session_scope(sqlite_db) as session:
        paths = list(session.scalars(select(Image.path).where(Image.split == "test")))
    assert paths and all(path.startswith(f"{s3_bucket}/synth/images/test/") for path in paths)
