"""The field's layouts in the store (SQLite and PostgreSQL): imports, all-or-nothing splits, KTVIC words, describe.

Fixture files come from the writers of ``tests/data/test_field_formats.py``;
the photos they name are small PNGs written next to them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image as PILImage
from sqlalchemy import Engine, func, select

from tests.data.test_field_formats import (
    CAPTIONS,
    LAYOUTS,
    MALFORMED,
    SEGMENTED,
    write_csv,
    write_jsonl,
    write_ktvic,
    write_openviic,
)
from vicap_jobs.cli.main import cli
from vicap_jobs.data import text as text_module
from vicap_jobs.data.text import SegmentedCaption, normalize
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Dataset, Image, ReferenceCaption
from vicap_jobs.errors import DatasetFormatError, InputError
from vicap_jobs.metrics.baseline import choose_blind_baseline
from vicap_jobs.services.datasets import (
    ImportReport,
    get_dataset,
    import_file,
    load_samples,
    profile_dataset,
    split_references,
)
from vicap_jobs.services.evaluation import ensure_baseline
from vicap_jobs.training.batches import tokenize_samples

# --------------------------------------------------------------------------- helpers


def _photos(folder: Path, names: list[str]) -> None:
    """A distinct 16×12 PNG per name (colour from its position)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        PILImage.new("RGB", (16, 12), (60 * i % 256, 120, 200)).save(folder / name)


def _counts(engine: Engine) -> tuple[int, int, int]:
    """(data sets, images, reference captions) in the store."""
    with session_scope(engine) as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(table)) or 0 for table in (Dataset, Image, ReferenceCaption)
        )


def _stored(engine: Engine, name: str) -> dict[str, dict[str, list[tuple[str, str | None]]]]:
    """split -> file name -> [(reference text, segmented)] as stored, in position order."""
    stored: dict[str, dict[str, list[tuple[str, str | None]]]] = {}
    with session_scope(engine) as session:
        rows = session.execute(
            select(Image.split, Image.file_name, ReferenceCaption.text, ReferenceCaption.segmented)
            .join(ReferenceCaption)
            .join(Dataset)
            .where(Dataset.name == name)
            .order_by(Image.id, ReferenceCaption.position)
        ).all()
    for split, file_name, text, segmented in rows:
        stored.setdefault(str(split), {}).setdefault(file_name, []).append((text, segmented))
    return stored


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """A folder holding the photos every fixture file names."""
    folder = tmp_path / "photos"
    _photos(folder, list(CAPTIONS))
    return folder


# --------------------------------------------------------------------------- every layout, both stores


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_imports_into_the_store(any_db: Engine, photos: Path, layout: str) -> None:
    """Detected format, implied (or given) split, every caption in order, photos found and hashed."""
    write, implied = LAYOUTS[layout]
    path = write(photos)
    split = None if implied else "test"
    (report,) = import_file(db=any_db, name="field", annotations=path, split=split)
    assert report == ImportReport("field", implied or "test", 3, 6, 0, [])
    assert get_dataset(db=any_db, name="field").format == layout
    segmented = layout == "ktvic"
    assert _stored(any_db, "field") == {
        implied or "test": {
            name: [(text, SEGMENTED[text] if segmented else None) for text in texts] for name, texts in CAPTIONS.items()
        }
    }
    with session_scope(any_db) as session:
        images = session.execute(select(Image.file_name, Image.coco_id, Image.sha256).order_by(Image.id)).all()
    coco_ids = {"uit-openviic": [500, 501, 502], "ktvic": [0, 1, 2]}.get(layout, [None, None, None])
    assert [coco_id for _, coco_id, _ in images] == coco_ids
    assert all(sha is not None for _, _, sha in images)


@pytest.mark.parametrize("write", [write_csv, write_jsonl], ids=["csv", "jsonl"])
def test_a_multi_split_file_imports_every_split_at_once(
    any_db: Engine, photos: Path, write: Callable[..., Path]
) -> None:
    """A split column yields one report per split, in train/val/test order."""
    path = write(photos, splits={"a.png": "test", "b.png": "train", "c.png": "dev"})
    reports = import_file(db=any_db, name="mixed", annotations=path)
    assert [(r.split, r.n_images, r.n_captions) for r in reports] == [("train", 1, 2), ("val", 1, 2), ("test", 1, 2)]
    assert {split: list(files) for split, files in _stored(any_db, "mixed").items()} == {
        "train": ["b.png"],
        "val": ["c.png"],
        "test": ["a.png"],
    }


def test_split_picks_rows_of_a_split_column_and_overrides_a_file_name(any_db: Engine, photos: Path) -> None:
    """--split selects that split's rows of a csv; on uit-openviic-dev.json it replaces val."""
    path = write_csv(photos, splits={"a.png": "train", "b.png": "test", "c.png": "test"})
    (report,) = import_file(db=any_db, name="picked", annotations=path, split="test")
    assert (report.split, report.n_images) == ("test", 2)
    with pytest.raises(InputError, match="has no val rows"):
        import_file(db=any_db, name="picked", annotations=path, split="val")
    (forced,) = import_file(db=any_db, name="forced", annotations=write_openviic(photos, "dev"), split="train")
    assert forced.split == "train"


@pytest.mark.parametrize("layout", ["captions-txt", "csv", "jsonl"])
def test_a_file_that_names_no_split_needs_one(any_db: Engine, photos: Path, layout: str) -> None:
    """Without --split or a split column, the import is refused and nothing is written."""
    write, _ = LAYOUTS[layout]
    with pytest.raises(InputError, match=rf"\({layout}\) does not say which split it holds: give --split"):
        import_file(db=any_db, name="unsplit", annotations=write(photos))
    assert _counts(any_db) == (0, 0, 0)


# --------------------------------------------------------------------------- nothing half-imported


@pytest.mark.parametrize(("file_name", "fmt", "content", "message"), MALFORMED)
def test_a_malformed_file_leaves_no_data_set(
    any_db: Engine, tmp_path: Path, file_name: str, fmt: str, content: str, message: str
) -> None:
    """Each malformed variant is one line naming file and record; no data set row stays."""
    path = tmp_path / file_name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetFormatError) as caught:
        import_file(db=any_db, name="broken", annotations=path, split="train")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert _counts(any_db) == (0, 0, 0)


def test_a_failing_second_split_rolls_back_the_first(any_db: Engine, photos: Path) -> None:
    """One photo in two splits of one file: the writer fails on the second split and the first is gone too."""
    path = write_jsonl(photos, {"a.png": ["ảnh một"], "b.png": ["ảnh hai"]}, splits={"a.png": "train", "b.png": "val"})
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.append(json.dumps({"file": "a.png", "caption": "lại ảnh một", "split": "val"}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"a\.png is already in another split of 'leaky'"):
        import_file(db=any_db, name="leaky", annotations=path)
    assert _counts(any_db) == (0, 0, 0)


def test_a_split_already_there_keeps_the_whole_file_out(any_db: Engine, photos: Path) -> None:
    """The test split exists; a train+test file without --replace adds neither, the old test split stays."""
    import_file(db=any_db, name="grow", annotations=write_ktvic(photos, "test", {"c.png": CAPTIONS["c.png"]}))
    before = _counts(any_db)
    both = write_csv(photos, {"a.png": ["ảnh"], "b.png": ["ảnh"]}, splits={"a.png": "train", "b.png": "test"})
    with pytest.raises(InputError, match="already has a test split"):
        import_file(db=any_db, name="grow", annotations=both)
    assert _counts(any_db) == before == (1, 1, 2)


# --------------------------------------------------------------------------- KTVIC words never through pyvi


@pytest.fixture()
def ktvic_store(any_db: Engine, tmp_path: Path) -> Engine:
    """KTVIC train and test splits (the same captions on different photos) in the store."""
    for split in ("train", "test"):
        folder = tmp_path / f"ktvic-{split}"
        names = {f"{split}-{name}": texts for name, texts in CAPTIONS.items()}
        _photos(folder, list(names))
        import_file(db=any_db, name="ktvic", annotations=write_ktvic(folder, split, names))
    return any_db


def test_ktvic_references_and_samples_carry_their_segmentation(ktvic_store: Engine) -> None:
    """split_references and load_samples hand out SegmentedCaption; other data sets' references stay plain."""
    dataset_id = get_dataset(db=ktvic_store, name="ktvic").id
    references = split_references(db=ktvic_store, dataset_id=dataset_id, split="test")
    first = next(iter(references.values()))
    assert [(r, r.segmented) for r in first if isinstance(r, SegmentedCaption)] == [
        (text, SEGMENTED[text]) for text in CAPTIONS["a.png"]
    ]
    samples = load_samples(db=ktvic_store, dataset="ktvic", split="train")
    assert all(isinstance(c, SegmentedCaption) for s in samples for c in s.captions)


def test_word_tokenized_ktvic_references_never_reach_pyvi(ktvic_store: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training tokens and the blind baseline's choice run with pyvi raising; scoring sends it the prediction only."""
    asked: list[str] = []

    def no_pyvi(text: str) -> str:
        raise AssertionError(f"pyvi was asked to segment {text!r}")

    def spy(text: str) -> str:
        asked.append(text)
        return text

    monkeypatch.setattr(text_module, "_pyvi_tokenize", lambda: no_pyvi)
    dataset_id = get_dataset(db=ktvic_store, name="ktvic").id
    train = load_samples(db=ktvic_store, dataset="ktvic", split="train")
    tokens = tokenize_samples(train, "word")
    assert tokens[1][0] == ["một", "cậu_bé", "đang", "đá_bóng", "trên", "sân_cỏ"]
    choice = choose_blind_baseline(
        split_references(db=ktvic_store, dataset_id=dataset_id, split="train"), tokenization="word"
    )
    normalized_references = {normalize(text) for texts in CAPTIONS.values() for text in texts}
    assert choice.caption in normalized_references  # words joined back with spaces

    monkeypatch.setattr(text_module, "_pyvi_tokenize", lambda: spy)
    baseline = ensure_baseline(db=ktvic_store, dataset_id=dataset_id, split="test", tokenization="word")
    assert baseline is not None and baseline[1] == choice.caption
    assert asked == [choice.caption]  # the constant prediction, once; never a reference


# --------------------------------------------------------------------------- describe


def test_profile_counts_lengths_vocabulary_and_frequent_captions(any_db: Engine, tmp_path: Path) -> None:
    """Per split: images, captions per image, nearest-rank length percentiles, syllable vocabulary, top captions."""
    train = {
        "a.png": ["Một con mèo.", "Một con mèo", "Con mèo đen nằm ngủ trên ghế sofa cũ"],
        "b.png": ["Một con mèo!"],
        "c.png": ["Con chó", "Con chó vàng", "Một con mèo", "Hai con chó"],
    }
    path = write_csv(
        tmp_path, {**train, "t.png": ["Một người đàn ông"]}, splits={**dict.fromkeys(train, "train"), "t.png": "test"}
    )
    import_file(db=any_db, name="profiled", annotations=path)
    profile = profile_dataset(db=any_db, name="profiled", top=2)
    assert [s.split for s in profile.splits] == ["train", "test"]
    tr, te = profile.splits
    assert (tr.n_images, tr.n_captions, tr.min_per_image, tr.max_per_image) == (3, 8, 1, 4)
    assert tr.mean_per_image == pytest.approx(8 / 3)
    # lengths in syllables: 3, 3, 9, 3, 2, 3, 3, 3 -> sorted 2 3 3 3 3 3 3 9
    assert (tr.length_percentiles, tr.max_length) == ({5: 2, 50: 3, 95: 9}, 9)
    assert tr.vocabulary_size == len(
        {"một", "con", "mèo", "đen", "nằm", "ngủ", "trên", "ghế", "sofa", "cũ", "chó", "vàng", "hai"}
    )
    assert tr.top_captions == [("một con mèo", 4), ("con chó", 1)]
    assert (te.n_images, te.length_percentiles, te.vocabulary_size, te.top_captions) == (
        1,
        {5: 4, 50: 4, 95: 4},
        4,
        [("một người đàn ông", 1)],
    )
    assert (tr.n_missing_files, profile.format) == (3, "csv")


# --------------------------------------------------------------------------- command line


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="vicap-jobs")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cli_imports_each_layout_without_a_format(vicap_env: Path, photos: Path, layout: str) -> None:
    """`dataset import NAME --annotations F` detects the layout (--split only where the file names none)."""
    write, implied = LAYOUTS[layout]
    args = ["dataset", "import", "field", "--annotations", str(write(photos))]
    result = _invoke(*args, *([] if implied else ["--split", "val"]))
    assert result.exit_code == 0, result.output
    assert f"imported 3 images and 6 captions into 'field' ({implied or 'val'})" in result.output


def test_cli_reports_a_bad_file_in_one_line_and_describes_a_data_set(vicap_env: Path, photos: Path) -> None:
    """A malformed file exits 1 with one line; describe prints the profile table and the frequent captions."""
    bad = photos / "train_data.json"
    bad.write_text(
        '{"images": [{"id": 0, "filename": "a.png"}], "annotations": [{"id": 1, "image_id": 3, "caption": "x"}]}'
    )
    failed = _invoke("dataset", "import", "k", "--annotations", str(bad))
    assert failed.exit_code == 1
    assert failed.output.strip().splitlines() == [f"Error: {bad}: annotations[0] has a caption for unknown image id 3"]
    imported = _invoke(
        "dataset", "import", "mixed", "--annotations", str(write_csv(photos, splits=dict.fromkeys(CAPTIONS, "train")))
    )
    assert imported.exit_code == 0, imported.output
    described = _invoke("dataset", "describe", "mixed", "--top", "1")
    assert described.exit_code == 0, described.output
    assert "data set mixed (csv)" in described.output
    assert "2/2.00/2" in described.output  # captions per image min/mean/max
    assert "most frequent train captions:" in described.output
