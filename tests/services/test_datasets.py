"""Importing data sets into the store: real UIT-ViIC, captions.txt, missing photos, malformed files, one transaction."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine, func, select

from vicap_jobs.data.text import normalize, tokenize
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import SPLITS, Dataset, Image, ReferenceCaption
from vicap_jobs.errors import DatasetFormatError, InputError, NotFoundError
from vicap_jobs.services.datasets import (
    MISSING_SHOWN,
    ImportReport,
    SplitStats,
    describe_dataset,
    import_split,
    list_datasets,
    load_samples,
    split_references,
)

UITVIIC_COUNTS = {"train": (2695, 13481), "val": (924, 4620), "test": (231, 1155)}
UITVIIC_TRAIN_ODD_IMAGES = {246976: 1, 300655: 4, 549915: 9, 487607: 10}


# --------------------------------------------------------------------------- helpers


def _counts(engine: Engine) -> tuple[int, int, int]:
    """(data sets, images, reference captions) in the store."""
    with session_scope(engine) as session:
        datasets, images, references = (
            session.scalar(select(func.count()).select_from(m)) or 0 for m in (Dataset, Image, ReferenceCaption)
        )
    return datasets, images, references


def _write_coco(path: Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations}, ensure_ascii=False), encoding="utf-8")
    return path


def _png(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(path)
    return path


def _import(
    engine: Engine, annotations: Path, split: str = "train", *, name: str = "tiny", fmt: str = "coco", **kw: Any
) -> ImportReport:
    return import_split(
        db=engine, name=name, fmt=fmt, annotations=annotations, images_dir=kw.pop("images_dir", None), split=split, **kw
    )


@pytest.fixture()
def tiny_coco(tmp_path: Path) -> Callable[[str, list[tuple[str, list[str]]]], Path]:
    """``make(split, [(file_name, [captions...]), ...])`` -> a COCO captions JSON under tmp_path/<split>/."""

    def make(split: str, entries: list[tuple[str, list[str]]]) -> Path:
        images = [{"id": 100 + i, "file_name": name} for i, (name, _) in enumerate(entries)]
        annotations = [
            {"id": 1000 + 10 * i + j, "image_id": 100 + i, "caption": caption}
            for i, (_, captions) in enumerate(entries)
            for j, caption in enumerate(captions)
        ]
        return _write_coco(tmp_path / split / f"captions_{split}.json", images, annotations)

    return make


# --------------------------------------------------------------------------- real UIT-ViIC (imported once)


@pytest.fixture(scope="module")
def uitviic_store(
    make_sqlite_db: Callable[[Path], Engine], tmp_path_factory: pytest.TempPathFactory, uitviic_dir: Path
) -> tuple[Engine, dict[str, ImportReport], Path]:
    """All three UIT-ViIC splits imported as 'uitviic', with an (empty) photo folder: none of the COCO photos are here."""
    folder = tmp_path_factory.mktemp("uitviic")
    photos = folder / "coco-photos"
    photos.mkdir()
    engine = make_sqlite_db(folder / "store")
    reports = {
        split: import_split(
            db=engine,
            name="uitviic",
            fmt="coco",
            annotations=uitviic_dir / f"uitviic_captions_{split}2017.json",
            images_dir=photos,
            split=split,
        )
        for split in SPLITS
    }
    return engine, reports, photos


@pytest.mark.parametrize("split", SPLITS)
def test_uitviic_import_counts_and_reports_the_missing_photos(
    uitviic_store: tuple[Engine, dict[str, ImportReport], Path], uitviic_dir: Path, split: str
) -> None:
    engine, reports, photos = uitviic_store
    report = reports[split]
    n_images, n_captions = UITVIIC_COUNTS[split]
    assert (report.dataset, report.split, report.n_images, report.n_captions) == (
        "uitviic",
        split,
        n_images,
        n_captions,
    )
    assert report.n_missing == n_images
    raw = json.loads((uitviic_dir / f"uitviic_captions_{split}2017.json").read_text(encoding="utf-8"))
    first = [str((photos / entry["file_name"]).resolve()) for entry in raw["images"][:MISSING_SHOWN]]
    assert report.missing_examples == first

    with session_scope(engine) as session:
        in_split = (
            Image.split == split,
            Image.dataset_id == select(Dataset.id).where(Dataset.name == "uitviic").scalar_subquery(),
        )
        assert session.scalar(select(func.count()).select_from(Image).where(*in_split)) == n_images
        assert (
            session.scalar(select(func.count()).select_from(ReferenceCaption).join(Image).where(*in_split))
            == n_captions
        )
        assert session.scalar(select(func.count()).select_from(Image).where(*in_split, Image.sha256.is_not(None))) == 0
        row = session.scalar(select(Image).where(*in_split, Image.coco_id == raw["images"][0]["id"]))
        assert row is not None
        assert (row.file_name, row.path) == (raw["images"][0]["file_name"], first[0])
        assert (row.width, row.height) == (raw["images"][0]["width"], raw["images"][0]["height"])  # from the JSON


def test_uitviic_odd_caption_counts_survive_the_import(
    uitviic_store: tuple[Engine, dict[str, ImportReport], Path],
) -> None:
    engine, _, _ = uitviic_store
    with session_scope(engine) as session:
        per_image = dict(
            session.execute(
                select(Image.coco_id, func.count(ReferenceCaption.id))
                .join(ReferenceCaption)
                .where(Image.split == "train", Image.coco_id.in_(UITVIIC_TRAIN_ODD_IMAGES))
                .group_by(Image.coco_id)
            ).all()
        )
    assert per_image == UITVIIC_TRAIN_ODD_IMAGES


def test_uitviic_references_keep_text_order_and_normalized_form(
    uitviic_store: tuple[Engine, dict[str, ImportReport], Path], uitviic_dir: Path
) -> None:
    engine, _, _ = uitviic_store
    raw = json.loads((uitviic_dir / "uitviic_captions_test2017.json").read_text(encoding="utf-8"))
    first = raw["images"][0]["id"]
    expected = [a["caption"].strip() for a in raw["annotations"] if a["image_id"] == first]
    with session_scope(engine) as session:
        image = session.scalar(select(Image).where(Image.coco_id == first, Image.split == "test"))
        assert image is not None
        refs = [(r.position, r.text, r.normalized) for r in image.references]
    assert refs == [(i, text, normalize(text)) for i, text in enumerate(expected)]


def test_describe_uitviic(uitviic_store: tuple[Engine, dict[str, ImportReport], Path], uitviic_dir: Path) -> None:
    engine, _, photos = uitviic_store
    info = describe_dataset(db=engine, name="uitviic")
    assert (info.name, info.format, info.source_path) == ("uitviic", "coco", str(photos))
    assert info.splits == [
        SplitStats("train", 2695, 13481, 1, 10, 2695),
        SplitStats("val", 924, 4620, 5, 5, 924),
        SplitStats("test", 231, 1155, 5, 5, 231),
    ]
    train = json.loads((uitviic_dir / "uitviic_captions_train2017.json").read_text(encoding="utf-8"))
    vocabulary = {token for a in train["annotations"] for token in tokenize(a["caption"], "syllable")}
    assert info.vocabulary_size == len(vocabulary)
    assert 1000 < len(vocabulary) < 5000  # syllables with diacritics, not 'm t c u b'

    listed = list_datasets(db=engine)
    assert [(d.name, d.vocabulary_size, [s.n_images for s in d.splits]) for d in listed] == [
        ("uitviic", None, [2695, 924, 231])
    ]


def test_load_uitviic_samples(uitviic_store: tuple[Engine, dict[str, ImportReport], Path], uitviic_dir: Path) -> None:
    engine, _, photos = uitviic_store
    assert load_samples(db=engine, dataset="uitviic", split="test") == []  # no photo is on disk
    samples = load_samples(db=engine, dataset="uitviic", split="test", require_files=False)
    assert len(samples) == 231
    raw = json.loads((uitviic_dir / "uitviic_captions_test2017.json").read_text(encoding="utf-8"))
    assert [s.image_path for s in samples] == [(photos / e["file_name"]).resolve() for e in raw["images"]]
    by_id = {}
    for a in raw["annotations"]:
        by_id.setdefault(a["image_id"], []).append(a["caption"].strip())
    assert samples[0].captions == tuple(by_id[raw["images"][0]["id"]])
    assert all(len(s.captions) == 5 for s in samples)

    references = split_references(
        db=engine, dataset_id=describe_dataset(db=engine, name="uitviic", with_vocabulary=False).id, split="test"
    )
    assert {image_id: tuple(texts) for image_id, texts in references.items()} == {
        s.image_id: s.captions for s in samples
    }


# --------------------------------------------------------------------------- photos required


def test_require_images_fails_and_writes_nothing(sqlite_db: Engine, uitviic_dir: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    with pytest.raises(InputError, match=r"231 of 231 images are missing under .*photos, e\.g\. .*\.jpg") as caught:
        _import(
            sqlite_db,
            uitviic_dir / "uitviic_captions_test2017.json",
            "test",
            name="uitviic",
            images_dir=photos,
            require_images=True,
        )
    assert str(photos.resolve()) in str(caught.value)
    assert _counts(sqlite_db) == (0, 0, 0)


def test_require_images_passes_when_every_photo_is_there(
    sqlite_db: Engine, tiny_coco: Callable[..., Path], tmp_path: Path
) -> None:
    annotations = tiny_coco("train", [("a.png", ["Một quả bóng"]), ("b.png", ["Hai quả bóng"])])
    _png(annotations.parent / "a.png", (40, 30))
    _png(annotations.parent / "b.png", (20, 10), seed=1)
    report = _import(sqlite_db, annotations, require_images=True)
    assert (report.n_images, report.n_captions, report.n_missing, report.missing_examples) == (2, 2, 0, [])


# --------------------------------------------------------------------------- captions.txt (Kaggle layout)


def test_captions_txt_import_with_photos_on_disk(sqlite_db: Engine, tmp_path: Path) -> None:
    root = tmp_path / "kaggle"
    for split, rows in {
        "train": [
            ("images/001.png", "Một cậu bé đang đá bóng."),
            ("images/001.png", "Cậu bé chơi bóng đá"),
            ("images/002.png", "Hai người chơi quần vợt"),
        ],
        "test": [("images/101.png", "Một cầu thủ bóng chày"), ("images/102.png", "Một người đang bơi")],
    }.items():
        (root / split).mkdir(parents=True)
        (root / split / "captions.txt").write_text(
            "image_path\tcaption\n" + "".join(f"{path}\t{caption}\n" for path, caption in rows), encoding="utf-8"
        )
    photos = {
        "train": [_png(root / "train/images/001.png", (32, 24)), _png(root / "train/images/002.png", (16, 16), seed=2)],
        "test": [_png(root / "test/images/101.png", (8, 12), seed=3)],  # 102.png is missing
    }

    train = _import(sqlite_db, root / "train/captions.txt", "train", name="kaggle", fmt="captions-txt")
    test = _import(sqlite_db, root / "test/captions.txt", "test", name="kaggle", fmt="captions-txt")
    assert (train.n_images, train.n_captions, train.n_missing) == (2, 3, 0)
    assert (test.n_images, test.n_captions, test.n_missing) == (2, 2, 1)
    assert test.missing_examples == [str((root / "test/images/102.png").resolve())]

    with session_scope(sqlite_db) as session:
        rows = {
            r.path: (r.split, r.file_name, r.sha256, r.width, r.height, r.coco_id)
            for r in session.scalars(select(Image))
        }
        assert session.scalar(select(Dataset.format).where(Dataset.name == "kaggle")) == "captions-txt"
    for split, files in photos.items():
        for path in files:
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            with PILImage.open(path) as im:
                assert rows[str(path.resolve())] == (split, f"images/{path.name}", sha, im.width, im.height, None)
    assert rows[str((root / "test/images/102.png").resolve())][2:5] == (None, None, None)

    samples = load_samples(db=sqlite_db, dataset="kaggle", split="train")
    assert [(s.image_path, s.captions) for s in samples] == [
        (photos["train"][0].resolve(), ("Một cậu bé đang đá bóng.", "Cậu bé chơi bóng đá")),
        (photos["train"][1].resolve(), ("Hai người chơi quần vợt",)),
    ]
    assert [s.image_path.name for s in load_samples(db=sqlite_db, dataset="kaggle", split="test")] == ["101.png"]
    assert len(load_samples(db=sqlite_db, dataset="kaggle", split="test", require_files=False)) == 2


# --------------------------------------------------------------------------- malformed files: nothing half-written


GOOD_IMAGES = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
MALFORMED = [
    pytest.param('{"images": [', "invalid JSON", id="bad-json"),
    pytest.param(
        json.dumps({"images": GOOD_IMAGES}), "needs top-level 'images' and 'annotations'", id="missing-annotations"
    ),
    pytest.param(
        json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2}], "annotations": []}),
        "images[1] is missing 'file_name'",
        id="missing-file-name",
    ),
    pytest.param(
        json.dumps(
            {"images": GOOD_IMAGES, "annotations": [{"image_id": 1, "caption": "Một quả bóng"}, {"image_id": 2}]}
        ),
        "annotations[1] is missing 'caption'",
        id="missing-caption",
    ),
    pytest.param(
        json.dumps(
            {"images": GOOD_IMAGES, "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 3, "caption": "y"}]}
        ),
        "annotations[1] has a caption for unknown image id 3",
        id="unknown-image-id",
    ),
    pytest.param(
        json.dumps(
            {"images": GOOD_IMAGES, "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 2, "caption": ""}]}
        ),
        "annotations[1] has an empty caption",
        id="empty-caption",
    ),
]


@pytest.mark.parametrize(("content", "message"), MALFORMED)
def test_malformed_coco_names_file_and_entry_and_writes_nothing(
    sqlite_db: Engine, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetFormatError) as caught:
        _import(sqlite_db, path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)
    assert _counts(sqlite_db) == (0, 0, 0)


def test_malformed_captions_txt_writes_nothing(sqlite_db: Engine, tmp_path: Path) -> None:
    path = tmp_path / "train" / "captions.txt"
    path.parent.mkdir()
    path.write_text("a.jpg\tMột quả bóng\nb.jpg\t \n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"captions\.txt: line 2 has an empty caption"):
        _import(sqlite_db, path, fmt="captions-txt")
    assert _counts(sqlite_db) == (0, 0, 0)


def test_a_failure_while_writing_rolls_back_the_whole_split(sqlite_db: Engine, tmp_path: Path) -> None:
    """Two image ids naming one file pass the reader; the writer rejects the second after the first rows were added."""
    path = _write_coco(
        tmp_path / "dup.json",
        [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "a.jpg"}],
        [{"image_id": i, "caption": f"ảnh {i}"} for i in (1, 2, 3)],
    )
    with pytest.raises(InputError, match=r"dup\.json: a\.jpg"):
        _import(sqlite_db, path)
    assert _counts(sqlite_db) == (0, 0, 0)


def test_a_failed_second_split_leaves_the_first_intact(
    sqlite_db: Engine, tiny_coco: Callable[..., Path], tmp_path: Path
) -> None:
    _import(sqlite_db, tiny_coco("train", [("a.jpg", ["Một quả bóng", "Quả bóng đỏ"])]))
    before = _counts(sqlite_db)
    broken = _write_coco(tmp_path / "val.json", [{"id": 1, "file_name": "v.jpg"}], [{"image_id": 9, "caption": "x"}])
    with pytest.raises(DatasetFormatError, match="unknown image id 9"):
        _import(sqlite_db, broken, "val")
    assert _counts(sqlite_db) == before == (1, 1, 2)


def test_a_split_is_imported_once_unless_replaced(sqlite_db: Engine, tiny_coco: Callable[..., Path]) -> None:
    first = tiny_coco("train", [("a.jpg", ["Một quả bóng"]), ("b.jpg", ["Hai quả bóng"])])
    _import(sqlite_db, first)
    with pytest.raises(InputError, match=r"already has a train split \(2 images\); pass --replace"):
        _import(sqlite_db, first)
    assert _counts(sqlite_db) == (1, 2, 2)

    second = tiny_coco("train", [("a.jpg", ["Một quả bóng", "Quả bóng trắng"]), ("c.jpg", ["Ba quả bóng"])])
    report = _import(sqlite_db, second, replace=True)
    assert (report.n_images, report.n_captions) == (2, 3)
    assert _counts(sqlite_db) == (1, 2, 3)
    with session_scope(sqlite_db) as session:
        assert sorted(session.scalars(select(Image.file_name))) == ["a.jpg", "c.jpg"]


def test_a_file_cannot_be_in_two_splits(sqlite_db: Engine, tmp_path: Path) -> None:
    train = _write_coco(tmp_path / "train.json", [{"id": 1, "file_name": "a.jpg"}], [{"image_id": 1, "caption": "x"}])
    val = _write_coco(tmp_path / "val.json", [{"id": 1, "file_name": "a.jpg"}], [{"image_id": 1, "caption": "y"}])
    _import(sqlite_db, train)
    with pytest.raises(InputError, match="already in another split"):
        _import(sqlite_db, val, "val")
    assert _counts(sqlite_db) == (1, 1, 1)


def test_an_unknown_split_is_refused(sqlite_db: Engine, tiny_coco: Callable[..., Path]) -> None:
    with pytest.raises(InputError, match="--split must be one of train, val, test"):
        _import(sqlite_db, tiny_coco("train", [("a.jpg", ["x"])]), "dev")
    assert _counts(sqlite_db) == (0, 0, 0)


# --------------------------------------------------------------------------- text


def test_an_nfd_caption_is_stored_as_nfc(sqlite_db: Engine, tiny_coco: Callable[..., Path]) -> None:
    nfc = "Một Cầu Thủ đang sút quả bóng!"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    _import(sqlite_db, tiny_coco("train", [("a.jpg", [nfd])]))
    with session_scope(sqlite_db) as session:
        text, normalized = session.execute(select(ReferenceCaption.text, ReferenceCaption.normalized)).one()
    assert text == nfc
    assert normalized == "một cầu thủ đang sút quả bóng"
    assert unicodedata.is_normalized("NFC", normalized)


# --------------------------------------------------------------------------- describe, list, samples


def test_describe_counts_per_split_and_train_only_vocabulary(sqlite_db: Engine, tiny_coco: Callable[..., Path]) -> None:
    _import(sqlite_db, tiny_coco("train", [("a.jpg", ["Một cậu bé.", "Cậu bé, chơi bóng!"]), ("b.jpg", ["Quả BÓNG"])]))
    _import(sqlite_db, tiny_coco("test", [("t.jpg", ["Con mèo ngủ", "Mèo", "Một con mèo"])]), "test")
    info = describe_dataset(db=sqlite_db, name="tiny")
    assert info.splits == [SplitStats("train", 2, 3, 1, 2, 2), SplitStats("test", 1, 3, 3, 3, 1)]
    assert info.vocabulary_size == len({"một", "cậu", "bé", "chơi", "bóng", "quả"})  # test words never count
    assert info.nightly_splits == []


def test_unknown_data_set_names_the_known_ones(sqlite_db: Engine, tiny_coco: Callable[..., Path]) -> None:
    with pytest.raises(NotFoundError, match="none imported yet"):
        describe_dataset(db=sqlite_db, name="uitviic")
    _import(sqlite_db, tiny_coco("train", [("a.jpg", ["x"])]), name="synth")
    with pytest.raises(NotFoundError, match="no data set named 'uitviic'; known: synth"):
        load_samples(db=sqlite_db, dataset="uitviic", split="test")


def test_samples_follow_import_order_and_skip_missing_files(sqlite_db: Engine, tiny_coco: Callable[..., Path]) -> None:
    annotations = tiny_coco("val", [("z.png", ["Chữ Z", "Chữ zét"]), ("a.png", ["Chữ A"]), ("m.png", ["Chữ M"])])
    _png(annotations.parent / "z.png", (8, 8))
    _png(annotations.parent / "m.png", (8, 8), seed=4)
    _import(sqlite_db, annotations, "val")
    assert [(s.image_path.name, s.captions) for s in load_samples(db=sqlite_db, dataset="tiny", split="val")] == [
        ("z.png", ("Chữ Z", "Chữ zét")),
        ("m.png", ("Chữ M",)),
    ]
    everything = load_samples(db=sqlite_db, dataset="tiny", split="val", require_files=False)
    assert [s.image_path.name for s in everything] == ["z.png", "a.png", "m.png"]
    assert load_samples(db=sqlite_db, dataset="tiny", split="train") == []
