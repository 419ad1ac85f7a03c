"""``submit``, ``jobs`` and ``captions export`` from the command line.

Jobs are run in-process with the library functions the workers call (the
worker processes themselves are tested in ``tests/worker``); the CLI is
driven with click's runner, or as a subprocess where it must publish to the
embedded broker.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from tests import store_helpers as jobs
from tests.worker.conftest import build_tiny_checkpoint, import_coco_dataset, make_image_folder, register_tiny_model
from vicap_jobs.cli.main import cli
from vicap_jobs.pipeline.runner import run_chunk
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.services.model_engines import EngineCache


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture
def store(vicap_env: Path, tiny_checkpoint: Path) -> Engine:
    """The store the CLI opens from settings (SQLite under VICAP_HOME), with the tiny model registered."""
    from vicap_jobs.cli.common import open_store

    _, db = open_store()
    register_tiny_model(db, tiny_checkpoint)
    return db


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="vicap-jobs")


def run_caption_job(db: Engine, folder: Path, *, chunk_size: int = 4) -> int:
    """Plan a caption job and run every chunk in this process, as a worker would."""
    plan = create_caption_job(
        db=db, folder=folder, model=None, engine_name="torch", recursive=True, batch_size=4, chunk_size=chunk_size
    )
    engines = EngineCache(db=db)
    for chunk_id in plan.chunk_ids:
        run_chunk(db=db, chunk_id=chunk_id, engines=engines, worker_name="test@host")
    return plan.job_id


# -- captions export -----------------------------------------------------------------------------


def test_coco_json_export_goes_straight_into_pycocoevalcap_and_matches_the_stored_scores(
    store: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pycocotools_coco = pytest.importorskip("pycocotools.coco")
    eval_module = pytest.importorskip("pycocoevalcap.eval")
    from vicap_jobs.services.evaluation import EvaluationResult, create_evaluate_job
    from vicap_jobs.services.runs import run_job

    files = import_coco_dataset(store, tmp_path / "coco", n_test=9)
    job_id = create_evaluate_job(db=store, model="tiny", dataset="coco-mini", split="test", engine_name="torch")
    outcome = run_job(db=store, job_id=job_id)  # as the worker's evaluate task does
    assert outcome.ok and isinstance(outcome.result, EvaluationResult)
    result = outcome.result

    out = tmp_path / "results.json"
    exported = invoke("captions", "export", str(job_id), "--format", "coco-json", "--out", str(out))
    assert exported.exit_code == 0, exported.output
    results = json.loads(out.read_text(encoding="utf-8"))
    coco_ids = {image["id"] for image in json.loads(files["test"].read_text(encoding="utf-8"))["images"]}
    assert {r["image_id"] for r in results} == coco_ids  # the ORIGINAL COCO ids, not the store's

    # pycocoevalcap's SPICE needs a download and METEOR a JVM run per call; BLEU, ROUGE-L, CIDEr run as is.
    class Skipped:
        def compute_score(self, gts, res):  # type: ignore[no-untyped-def]
            return 0.0, [0.0] * len(gts)

        def method(self) -> str:
            return "skipped"

    monkeypatch.setattr(eval_module, "Spice", Skipped)
    monkeypatch.setattr(eval_module, "Meteor", Skipped)
    coco = pycocotools_coco.COCO(str(files["test"]))
    coco_results = coco.loadRes(str(out))
    evaluator = eval_module.COCOEvalCap(coco, coco_results)
    evaluator.params["image_id"] = coco_results.getImgIds()
    evaluator.evaluate()

    stored = result.scores
    for ours, theirs in [
        (stored.bleu_1, "Bleu_1"),
        (stored.bleu_2, "Bleu_2"),
        (stored.bleu_3, "Bleu_3"),
        (stored.bleu_4, "Bleu_4"),
        (stored.rouge_l, "ROUGE_L"),
        (stored.cider_d, "CIDEr"),
    ]:
        assert evaluator.eval[theirs] == pytest.approx(ours, abs=1e-4), (theirs, evaluator.eval)
    assert stored.cider_d is not None and result.baseline is not None and result.baseline.cider_d is not None
    shown = invoke("scores", "--dataset", "coco-mini")  # CIDEr-D as stored, 2 decimals, not × 100
    assert shown.exit_code == 0, shown.output
    assert "CIDEr-D" in shown.output and f"{stored.cider_d:.2f}" in shown.output, shown.output
    assert f"{result.baseline.cider_d:.2f}" in shown.output, shown.output
    rescored = invoke("evaluate", "--predictions", str(out), "--dataset", "coco-mini", "--split", "test")
    assert rescored.exit_code == 0, rescored.output  # the exported captions score as the job did, CIDEr-D included
    assert f"{stored.cider_d:.2f}" in rescored.output and f"{result.baseline.cider_d:.2f}" in rescored.output


def test_csv_and_jsonl_exports_list_every_image_with_status_and_reason(store: Engine, tmp_path: Path) -> None:
    make_image_folder(tmp_path / "photos", 5)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"")
    job_id = run_caption_job(store, tmp_path / "photos")

    as_csv = invoke("captions", "export", str(job_id), "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == 6
    broken = next(r for r in rows if r["file_name"] == "broken.jpg")
    assert broken["status"] == "error" and "empty" in broken["error"] and broken["caption"] == ""
    assert all(r["status"] == "ok" and r["caption"] for r in rows if r is not broken)

    as_jsonl = invoke("captions", "export", str(job_id), "--format", "jsonl")
    lines = [json.loads(line) for line in as_jsonl.stdout.splitlines()]
    assert len(lines) == 6 and {"image_id", "file_name", "status", "caption", "error"} <= set(lines[0])

    coco = json.loads(invoke("captions", "export", str(job_id)).stdout)  # coco-json is the default
    assert len(coco) == 5 and all(set(r) == {"image_id", "caption"} for r in coco)


# -- jobs -------------------------------------------------------------------------------------


def test_jobs_list_and_show_report_progress_and_errors_by_reason(store: Engine, tmp_path: Path) -> None:
    make_image_folder(tmp_path / "photos", 3)
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    (tmp_path / "photos" / "b.jpg").write_text("không phải ảnh")
    job_id = run_caption_job(store, tmp_path / "photos", chunk_size=2)

    listed = invoke("jobs", "list")
    assert listed.exit_code == 0, listed.output
    assert "caption" in listed.output and "succeeded" in listed.output and "live workers: none" in listed.output

    shown = invoke("jobs", "show", str(job_id))
    assert shown.exit_code == 0, shown.output
    assert "5/5" in shown.output and "3 done" in shown.output
    assert "errors by reason" in shown.output and "empty file" in shown.output


def test_jobs_cancel_then_retry_reenqueues_only_missing_images(
    store: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vicap_jobs.worker import publish

    make_image_folder(tmp_path / "photos", 6)
    plan = create_caption_job(
        db=store,
        folder=tmp_path / "photos",
        model=None,
        engine_name="torch",
        recursive=False,
        batch_size=2,
        chunk_size=2,
    )
    published: list[tuple[str, list[int] | list[str]]] = []
    monkeypatch.setattr(publish, "revoke", lambda task_ids: published.append(("revoke", list(task_ids))))
    monkeypatch.setattr(
        publish, "_send_all", lambda task, messages, *, queue: published.append((queue, list(messages)))
    )
    run_chunk(db=store, chunk_id=plan.chunk_ids[0], engines=EngineCache(db=store), worker_name="test@host")

    cancelled = invoke("jobs", "cancel", str(plan.job_id))
    assert cancelled.exit_code == 0, cancelled.output
    assert jobs.get_job(store, plan.job_id).status == "cancelled"
    # a chunk that a worker picks up after the cancel is skipped
    assert (
        run_chunk(db=store, chunk_id=plan.chunk_ids[1], engines=EngineCache(db=store), worker_name="w").status
        == "skipped"
    )

    again = invoke("jobs", "cancel", str(plan.job_id))
    assert again.exit_code == 1 and again.output.startswith("Error: job") and "Traceback" not in again.output

    retried = invoke("jobs", "retry", str(plan.job_id))
    assert retried.exit_code == 0, retried.output
    queue, new_chunks = published[-1]
    assert queue == "vicap" and len(new_chunks) == 2  # the 4 images never captioned, in chunks of 2
    assert jobs.get_job(store, plan.job_id).status == "queued"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("jobs", "show", "999"), "no job with id 999"),
        (("captions", "export", "999"), "no job with id 999"),
        (("submit", "caption", "--dir", "/no/such/folder"), "folder not found"),
        (("submit", "caption", "--dir", ".", "--model", "nope"), "no model named 'nope'"),
        (("submit", "caption", "--dir", ".", "--engine", "int8"), "unknown engine"),
        (("submit", "evaluate", "--model", "tiny", "--dataset", "nope"), "no data set named 'nope'"),
    ],
)
def test_domain_errors_are_one_line(store: Engine, args: tuple[str, ...], expect: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expect in lines[0], result.output


def test_submit_without_wait_returns_the_job_id_at_once_and_says_how_to_start_a_worker(
    store: Engine, vicap_env: Path, tmp_path: Path
) -> None:
    """A real subprocess: it publishes to the embedded broker (no Redis, no worker)."""
    make_image_folder(tmp_path / "photos", 4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VICAP_")}
    env["VICAP_HOME"] = str(vicap_env)
    done = subprocess.run(
        [sys.executable, "-m", "vicap_jobs.cli.main", "submit", "caption", "--dir", str(tmp_path / "photos")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "job 1 queued: 4 images in 1 chunk(s) on queue vicap" in done.stdout
    assert "no worker is running; start one with `vicap-jobs worker --cpu`" in done.stderr
    job = jobs.get_job(store, 1)
    assert job.status == "queued"
    chunk_task_ids = jobs.cancel_job(store, 1)
    assert len(chunk_task_ids) == 1  # the broker task id was stored before publishing
