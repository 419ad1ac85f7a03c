"""``submit sweep``, ``sweeps show`` and ``models promote`` from the command line (runs executed in-process)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select

from vicap_jobs.cli import submit_cmd
from vicap_jobs.cli.main import cli
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Job
from vicap_jobs.services.datasets import create_synth_dataset
from vicap_jobs.services.runs import run_job

TINY_ARGS = ["--family", "cnn-lstm", "--dataset", "s", "--epochs", "1", "--image-size", "32", "--batch-size", "16"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="vicap-jobs")


@pytest.fixture
def store(vicap_env: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, list[int]]:
    """The CLI's store with the synthetic set; publishing records the job ids instead of sending messages."""
    from vicap_jobs.cli.common import open_store

    _, db = open_store()
    create_synth_dataset(db=db, name="s", n_images=80, seed=1, size=32, out_dir=vicap_env / "synth", nightly=False)
    published: list[int] = []

    def record(db: Engine, job_id: int) -> tuple[str, int]:
        published.append(job_id)
        return "vicap", 1

    monkeypatch.setattr(submit_cmd, "_publish", record)
    return db, published


def test_submit_sweep_queues_one_message_per_run_and_sweeps_show_tabulates_them(
    store: tuple[Engine, list[int]],
) -> None:
    """4 runs are published (not the parent); once run, the table has 2 rows with mean ± std, csv/json 4 raw rows."""
    db, published = store
    result = invoke("submit", "sweep", "cl", *TINY_ARGS, "--grid", "lr=1e-2,5e-3", "--repeats", "2")
    assert result.exit_code == 0, result.output
    assert "sweep cl: 4 runs (2 grid point(s) × 2 repeat(s)); parent job" in result.output
    assert "cl-lr1e-2-r1, cl-lr1e-2-r2, cl-lr5e-3-r1, cl-lr5e-3-r2" in result.output
    with session_scope(db) as session:
        kinds = {job_id: kind for job_id, kind in session.execute(select(Job.id, Job.kind)).all()}
    assert [kinds[i] for i in published] == ["sweep-train"] * 4
    for job_id in published:
        assert run_job(db=db, job_id=job_id).ok

    table = invoke("sweeps", "show", "cl")
    assert table.exit_code == 0, table.output
    assert "succeeded, 4/4 runs ended" in table.output
    lines = [line for line in table.output.splitlines() if "lr=" in line or "blind baseline" in line]
    assert len(lines) == 3 and lines[-1].lstrip("│ ").startswith("blind baseline")
    for line in lines[:2]:
        assert "2/2" in line and line.count("±") >= 5  # BLEU-1..4, ROUGE-L (and the other columns)
        assert re.search(r"│ \d+\.\d\d ± \d+\.\d\d +│", line), line  # CIDEr-D on its own scale, two decimals
    assert table.output.count("below baseline") == sum(1 for line in lines[:2] if "below baseline" in line)

    raw = invoke("sweeps", "show", "cl", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(raw.output)))
    assert [r["model"] for r in rows] == ["cl-lr1e-2-r1", "cl-lr1e-2-r2", "cl-lr5e-3-r1", "cl-lr5e-3-r2"]
    assert {r["seed"] for r in rows} == {"0", "1"} and all(float(r["bleu_4"]) >= 0 for r in rows)
    as_json = json.loads(invoke("sweeps", "show", "cl", "--format", "json").output)
    assert [r["lr"] for r in as_json] == [0.01, 0.01, 0.005, 0.005]
    assert all(r["status"] == "succeeded" and r["trainable_parameters"] > 0 for r in as_json)

    promoted = invoke("models", "promote", "cl-lr5e-3-r2", "cl-best")
    assert promoted.exit_code == 0, promoted.output
    assert "cl-best" in invoke("models", "list").output


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("lrr=1e-3", "Error: unknown training option 'lrr' in --grid"),
        ("lr=fast", "Error: --grid lr takes numbers, got 'fast'"),
        ("lr", "Error: --grid expects option=value,value,..."),
    ],
)
def test_a_bad_grid_is_one_error_line_and_queues_nothing(
    store: tuple[Engine, list[int]], grid: str, message: str
) -> None:
    """The mistake is named in one line; no job row is created."""
    db, published = store
    result = invoke("submit", "sweep", "bad", *TINY_ARGS, "--grid", grid)
    assert result.exit_code != 0 and result.output.strip().splitlines()[-1].startswith(message)
    with session_scope(db) as session:
        assert session.scalar(select(Job.id).limit(1)) is None
    assert published == []


def test_the_budget_guard_states_the_size_and_force_overrides_it(store: tuple[Engine, list[int]]) -> None:
    """Above VICAP_MAX_SWEEP_RUNS (default 24) the sweep is refused with its size; --force queues all 25 runs."""
    _, published = store
    grid = "lr=" + ",".join(f"{i}e-4" for i in range(1, 26))
    refused = invoke("submit", "sweep", "huge", *TINY_ARGS, "--grid", grid)
    assert refused.exit_code != 0
    assert "25 runs (25 grid point(s) × 1 repeat(s)), more than VICAP_MAX_SWEEP_RUNS=24" in refused.output
    assert "--force" in refused.output and published == []
    forced = invoke("submit", "sweep", "huge", *TINY_ARGS, "--grid", grid, "--force")
    assert forced.exit_code == 0, forced.output
    assert len(published) == 25


def test_sweeps_retry_requeues_and_publishes_only_the_failed_runs(
    store: tuple[Engine, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After one run failed, `sweeps retry` re-queues that run alone and publishes its message."""
    from vicap_jobs.services import sweeps as sweeps_service
    from vicap_jobs.worker import publish

    db, published = store
    assert invoke("submit", "sweep", "rt", *TINY_ARGS, "--grid", "lr=1e-2", "--repeats", "2").exit_code == 0
    real = sweeps_service.run_training

    def flaky(ctx: object) -> str:
        if ctx.params.name == "rt-lr1e-2-r1":  # type: ignore[attr-defined]
            raise RuntimeError("CUDA error (simulated)")
        return real(ctx)  # type: ignore[arg-type]

    monkeypatch.setattr(sweeps_service, "run_training", flaky)
    outcomes = [run_job(db=db, job_id=job_id) for job_id in published]
    assert [o.status for o in outcomes] == ["failed", "succeeded"]
    assert outcomes[0].error == "RuntimeError: CUDA error (simulated)"
    shown = invoke("sweeps", "show", "rt").output
    assert "failed, 2/2 runs ended" in shown and "rt-lr1e-2-r1 (job" in shown
    sent: list[int] = []

    def record(db: Engine, job_id: int) -> tuple[str, int]:
        sent.append(job_id)
        return "vicap", 1

    monkeypatch.setattr(publish, "publish_job", record)
    result = invoke("sweeps", "retry", "rt")
    assert result.exit_code == 0, result.output
    assert sent == [published[0]] and f"1 failed run(s) re-queued: jobs [{published[0]}]" in result.output
    again = invoke("sweeps", "retry", "rt")
    assert again.exit_code != 0 and "still running" in again.output


def test_sweeps_show_names_the_known_sweeps_when_one_is_missing(store: tuple[Engine, list[int]]) -> None:
    """An unknown sweep is one error line listing the sweeps there are."""
    assert invoke("submit", "sweep", "known", *TINY_ARGS, "--grid", "lr=1e-3").exit_code == 0
    result = invoke("sweeps", "show", "nope")
    assert result.exit_code != 0 and "no sweep named 'nope'; sweeps: known" in result.output
