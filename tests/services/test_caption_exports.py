"""A caption job exported as the VieCap4H submission and as Hugging Face JSON Lines, both read back.

The `datasets` library is not installed here (it is not a dependency), so the
hf-jsonl test checks what its ``json`` builder requires of JSON Lines: one
object per line, the same keys on every line, one type per key; the image
paths are absolute and name files that exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from tests import store_helpers as jobs
from vicap_jobs.cli.main import cli
from vicap_jobs.errors import UnknownNameError
from vicap_jobs.services.captions_export import FORMATS, export_captions
from vicap_jobs.services.datasets import import_file, load_samples

CAPTIONS = {0: "Bác sĩ đang khám bệnh cho bệnh nhân", 2: "Một y tá đang tiêm, trong bệnh viện"}


@pytest.fixture()
def captioned(any_db: Engine, tmp_path: Path) -> tuple[Engine, int, Path]:
    """A caption job over 3 ad-hoc photos: images 0 and 2 captioned, image 1 failed."""
    folder = tmp_path / "photos"
    image_ids = jobs.add_images(any_db, folder, 3)
    job_id, _ = jobs.caption_job(any_db, image_ids, chunk_size=3)
    jobs.write(
        any_db,
        job_id,
        [jobs.ok(image_ids[0], CAPTIONS[0]), jobs.error(image_ids[1]), jobs.ok(image_ids[2], CAPTIONS[2])],
    )
    return any_db, job_id, folder


def test_viecap4h_submission_lists_captioned_files_by_name(captioned: tuple[Engine, int, Path]) -> None:
    """[{"id": file name, "captions": text}] for ok captions only, in image order; the count says so."""
    db, job_id, _ = captioned
    text, n_rows = export_captions(db=db, job_id=job_id, fmt="viecap4h")
    assert json.loads(text) == [
        {"id": "img000.png", "captions": CAPTIONS[0]},
        {"id": "img002.png", "captions": CAPTIONS[2]},
    ]
    assert n_rows == 2


def test_hf_jsonl_has_one_consistent_object_per_line(captioned: tuple[Engine, int, Path]) -> None:
    """Every line is {"image": absolute existing path, "file_name", "text"} with string values."""
    db, job_id, folder = captioned
    text, n_rows = export_captions(db=db, job_id=job_id, fmt="hf-jsonl")
    lines = text.splitlines()
    rows = [json.loads(line) for line in lines]
    assert n_rows == len(rows) == 2 and text.endswith("\n")
    assert all(list(row) == ["image", "file_name", "text"] for row in rows)
    assert all(isinstance(value, str) for row in rows for value in row.values())
    assert [(Path(r["image"]), r["file_name"], r["text"]) for r in rows] == [
        ((folder / "img000.png").resolve(), "img000.png", CAPTIONS[0]),
        ((folder / "img002.png").resolve(), "img002.png", CAPTIONS[2]),
    ]
    assert all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in rows)
    assert "Bác sĩ" in lines[0]  # UTF-8 text, not \\u escapes


@pytest.mark.parametrize(("fmt", "file_name"), [("viecap4h", "train_captions.json"), ("hf-jsonl", "train.jsonl")])
def test_an_export_imports_back_as_a_data_set(captioned: tuple[Engine, int, Path], fmt: str, file_name: str) -> None:
    """The written file, imported without --format, gives the captioned photos their captions as references."""
    db, job_id, folder = captioned
    out = folder / file_name
    export_captions(db=db, job_id=job_id, fmt=fmt, out=out)
    (report,) = import_file(db=db, name=f"from-{fmt}", annotations=out, split="train")
    assert (report.n_images, report.n_captions, report.n_missing) == (2, 2, 0)
    samples = load_samples(db=db, dataset=f"from-{fmt}", split="train")
    assert [(s.image_path.name, s.captions) for s in samples] == [
        ("img000.png", (CAPTIONS[0],)),
        ("img002.png", (CAPTIONS[2],)),
    ]


def test_the_cli_offers_every_export_format(vicap_env: Path) -> None:
    """`captions export --help` lists the service's FORMATS, the new ones included; unknown names are refused."""
    assert {"viecap4h", "hf-jsonl"} <= set(FORMATS)
    help_text = CliRunner().invoke(cli, ["captions", "export", "--help"], prog_name="vicap-jobs").output
    assert all(name in help_text for name in FORMATS)
    with pytest.raises(UnknownNameError, match="hf-jsonl"):
        export_captions(db=None, job_id=1, fmt="parquet")  # type: ignore[arg-type]  # refused before the store
