"""Exports written to object storage (`--out s3://…`) on a real SeaweedFS server, and their one-line failures.

A missing bucket is not tested: SeaweedFS creates a bucket on the first PUT by an admin identity
(the fixture's), so only AWS itself would refuse it; ``services.outputs`` maps it (FileNotFoundError)
to "no such bucket or folder" the same way it maps access denied.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import s3fs
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from tests import store_helpers as jobs
from tests.seaweed import SeaweedS3
from vicap_jobs.cli import submit_cmd
from vicap_jobs.cli.main import cli
from vicap_jobs.services.captions_export import export_captions
from vicap_jobs.services.datasets import create_synth_dataset
from vicap_jobs.storage.objects import read_object, read_text

CAPTIONS = {0: "Một cầu thủ đang đá bóng trên sân", 2: "Hai người đang chơi quần vợt"}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="vicap-jobs")


@pytest.fixture()
def captioned(vicap_env: Path) -> tuple[Engine, int, Path]:
    """The CLI's store with a caption job over 3 photos: 0 and 2 captioned, 1 failed."""
    from vicap_jobs.cli.common import open_store

    _, db = open_store()
    folder = vicap_env / "photos"
    image_ids = jobs.add_images(db, folder, 3)
    job_id, _ = jobs.caption_job(db, image_ids, chunk_size=3)
    ok, failed = jobs.ok(image_ids[0], CAPTIONS[0]), jobs.error(image_ids[1])
    jobs.write(db, job_id, [ok, failed, jobs.ok(image_ids[2], CAPTIONS[2])])
    return db, job_id, folder


@pytest.mark.parametrize("fmt", ["coco-json", "csv", "jsonl", "viecap4h", "hf-jsonl"])
def test_captions_export_to_s3_writes_what_stdout_shows(
    captioned: tuple[Engine, int, Path], s3_bucket: str, fmt: str
) -> None:
    _, job_id, _ = captioned
    url = f"{s3_bucket}/exports/job-{job_id}.{fmt}"
    written = invoke("captions", "export", str(job_id), "--format", fmt, "--out", url)
    assert written.exit_code == 0, written.output
    assert f"written to {url}" in written.output
    shown = invoke("captions", "export", str(job_id), "--format", fmt)
    assert read_text(url) == shown.output


def test_coco_results_in_s3_read_back_as_json(captioned: tuple[Engine, int, Path], s3_bucket: str) -> None:
    db, job_id, _ = captioned
    url = f"{s3_bucket}/results.json"
    _, n_rows = export_captions(db=db, job_id=job_id, fmt="coco-json", out=url)
    results = json.loads(read_object(url))
    assert n_rows == 2 and [r["caption"] for r in results] == [CAPTIONS[0], CAPTIONS[2]]


def test_local_out_still_works_and_a_missing_local_folder_is_one_line(
    captioned: tuple[Engine, int, Path], tmp_path: Path
) -> None:
    _, job_id, _ = captioned
    out = tmp_path / "results.csv"
    assert invoke("captions", "export", str(job_id), "--format", "csv", "--out", str(out)).exit_code == 0
    assert list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))[1]["status"] == "error"
    missing = invoke("captions", "export", str(job_id), "--out", str(tmp_path / "nowhere" / "r.json"))
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == [
        f"Error: --out {tmp_path / 'nowhere' / 'r.json'}: folder {tmp_path / 'nowhere'} does not exist"
    ]
    folder = invoke("captions", "export", str(job_id), "--out", str(tmp_path))
    assert folder.exit_code == 1 and "is a folder" in folder.output and "Traceback" not in folder.output


def test_wrong_credentials_are_one_line_access_denied(
    captioned: tuple[Engine, int, Path], s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, job_id, _ = captioned
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3fs.S3FileSystem.clear_instance_cache()  # one client per process is cached: take a fresh one
    try:
        result = invoke("captions", "export", str(job_id), "--out", f"{s3_bucket}/denied.json")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "access denied" in result.output


@pytest.mark.slow
def test_storage_down_is_one_line_after_the_retries(captioned: tuple[Engine, int, Path], own_s3: SeaweedS3) -> None:
    server = own_s3
    bucket = server.new_bucket()
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()
    _, job_id, _ = captioned
    try:
        result = invoke("captions", "export", str(job_id), "--out", f"s3://{bucket}/r.json")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "object storage unreachable while writing" in result.output


def test_sweep_runs_export_to_s3(vicap_env: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A submitted sweep (runs not yet run) exports its raw run rows as CSV and JSON to the bucket."""
    from vicap_jobs.cli.common import open_store

    _, db = open_store()
    create_synth_dataset(db=db, name="s", n_images=20, seed=1, size=32, out_dir=vicap_env / "synth", nightly=False)
    monkeypatch.setattr(submit_cmd, "_publish", lambda db, job_id: ("vicap", 1))
    args = ["--family", "cnn-lstm", "--dataset", "s", "--epochs", "1", "--image-size", "32"]
    assert invoke("submit", "sweep", "cl", *args, "--grid", "lr=1e-2,5e-3").exit_code == 0
    for fmt in ("csv", "json"):
        url = f"{s3_bucket}/sweeps/cl.{fmt}"
        result = invoke("sweeps", "show", "cl", "--format", fmt, "--out", url)
        assert result.exit_code == 0, result.output
        assert read_text(url) == invoke("sweeps", "show", "cl", "--format", fmt).output
    rows = list(csv.DictReader(io.StringIO(read_text(f"{s3_bucket}/sweeps/cl.csv"))))
    assert [row["lr"] for row in rows] == ["0.01", "0.005"]
    table_out = invoke("sweeps", "show", "cl", "--out", f"{s3_bucket}/x.csv")
    assert table_out.exit_code == 1 and "--format csv or json" in table_out.output


def test_scores_export_to_s3(vicap_env: Path, s3_bucket: str) -> None:
    """`scores --format csv|json --out URL`; the table stays the default."""
    url = f"{s3_bucket}/reports/scores.json"
    result = invoke("scores", "--format", "json", "--out", url)
    assert result.exit_code == 0, result.output
    assert json.loads(read_text(url)) == []
    header = invoke("scores", "--format", "csv")
    assert header.output.startswith("model,family,dataset,split,tokenization,bleu_1,")
    assert "no evaluations yet" in invoke("scores").output


def test_hf_jsonl_keeps_an_object_url_as_the_image(captioned: tuple[Engine, int, Path]) -> None:
    """Photos captioned from object storage: ``image`` is their URL, never an absolute path made of it."""
    from sqlalchemy import update

    from vicap_jobs.db.session import session_scope
    from vicap_jobs.db.tables import Image

    db, job_id, _ = captioned
    with session_scope(db) as session:
        session.execute(update(Image).values(path="s3://photos-bucket/day1/" + Image.file_name))
    text, _ = export_captions(db=db, job_id=job_id, fmt="hf-jsonl")
    assert [json.loads(line)["image"] for line in text.splitlines()] == [
        "s3://photos-bucket/day1/img000.png",
        "s3://photos-bucket/day1/img002.png",
    ]
