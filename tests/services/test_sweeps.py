"""Sweeps: planning and the budget guard, children trained and evaluated in-process, the table, cancel, retry, promote."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from tests.conftest import SETTINGS_ENV_VARS
from vicap_jobs.db.session import dispose_engines, session_scope
from vicap_jobs.db.status import JobStatus
from vicap_jobs.db.store import open_engine
from vicap_jobs.db.tables import Job, Model
from vicap_jobs.errors import InputError
from vicap_jobs.jobs.lifecycle import cancel_job, child_job_ids, retry_job
from vicap_jobs.services import sweeps
from vicap_jobs.services.datasets import create_synth_dataset
from vicap_jobs.services.models import promote_model, resolve_model
from vicap_jobs.services.runs import run_job
from vicap_jobs.services.sweep_reports import sweep_report
from vicap_jobs.services.sweeps import SweepPlan, create_sweep, parse_grid, plan_sweep, run_name
from vicap_jobs.settings import get_settings, reset_settings

# A model that trains in about a second on 2 CPU cores (the synthetic set at 32 px).
TINY = {
    "epochs": 2,
    "image_size": 32,
    "embed_dim": 16,
    "hidden_dim": 32,
    "attention_dim": 16,
    "batch_size": 16,
    "backbone": "tiny",
    "backbone_weights": "random",
    "finetune_backbone": True,
    "progress_bar": False,
}
LRS = [1e-2, 5e-3, 1e-4]


def make_store(home: Path) -> Engine:
    """A store under VICAP_HOME=home with the synthetic set (80 images, 32 px) imported as ``s``."""
    db = open_engine(get_settings())
    create_synth_dataset(db=db, name="s", n_images=80, seed=1, size=32, out_dir=home / "synth", nightly=False)
    return db


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A VICAP_HOME for the whole module (the full sweep is trained once)."""
    home = tmp_path_factory.mktemp("sweep-home")
    with pytest.MonkeyPatch.context() as patch:
        for name in SETTINGS_ENV_VARS:
            patch.delenv(name, raising=False)
        patch.setenv("VICAP_HOME", str(home))
        reset_settings()
        dispose_engines()
        yield home
    dispose_engines()
    reset_settings()


@dataclass(frozen=True)
class Swept:
    db: Engine
    plan: SweepPlan


@pytest.fixture(scope="module")
def swept(module_home: Path) -> Swept:
    """3 learning rates × 2 repeats, every child run in this process as a worker would run it."""
    db = make_store(module_home)
    plan = create_sweep(db=db, name="sw", family="cnn-lstm", dataset="s", options=TINY, grid={"lr": LRS}, repeats=2)
    for child_id in plan.child_ids:
        run_job(db=db, job_id=child_id)
    return Swept(db, plan)


def statuses(db: Engine, job_ids: list[int] | tuple[int, ...]) -> list[str]:
    with session_scope(db) as session:
        return [str(session.get(Job, job_id).status) for job_id in job_ids]  # type: ignore[union-attr]


def job_row(db: Engine, job_id: int) -> Job:
    with session_scope(db) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


# -- planning -----------------------------------------------------------------------------------------


def test_run_names_and_seeds_are_derived_from_the_sweep() -> None:
    """Names follow NAME-lr5e-4-r1, every grid point × repeat is one run, each repeat has its own seed."""
    plan = plan_sweep(name="st", family="cnn-lstm", options={"seed": 7}, grid=parse_grid(["lr=1e-3,5e-4"]), repeats=2)
    assert [run[0] for run in plan.runs] == ["st-lr1e-3-r1", "st-lr1e-3-r2", "st-lr5e-4-r1", "st-lr5e-4-r2"]
    assert [run[3] for run in plan.runs] == [7, 8, 7, 8]
    assert plan.describe() == "4 runs (2 grid point(s) × 2 repeat(s))"
    assert run_name("x", {"batch_size": 32, "dropout": 0.25}, 3) == "x-batch-size32-dropout0.25-r3"
    assert [sweeps.format_value(v) for v in (1e-2, 2.5e-4, 0.1, 0.0, 1.0, True)] == [
        "1e-2",
        "2.5e-4",
        "0.1",
        "0",
        "1",
        "true",
    ]


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        (["lrr=1e-3"], "unknown training option 'lrr'"),
        (["lr=abc"], "--grid lr takes numbers, got 'abc'"),
        (["lr=-1e-3"], "grid point lr=-1e-3: TrainOptions.lr must be positive"),
        (["batch_size=0.5"], "--grid batch_size takes whole numbers"),
        (["seed=1,2"], "use --repeats"),
        (["lr"], "--grid expects option=value,value"),
        (["lr=1e-3,1e-3"], "lists a value twice"),
        (["early_stop_on=loss"], "grid point early_stop_on=loss"),
    ],
)
def test_a_bad_grid_is_one_line_naming_the_mistake(grid: list[str], expected: str) -> None:
    """Unknown options, wrong types and values no run can use fail before anything is queued, in one line."""
    with pytest.raises(InputError) as info:
        plan_sweep(name="st", family="cnn-lstm", options={}, grid=parse_grid(grid), repeats=1)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_budget_guard_refuses_big_sweeps_unless_forced(
    vicap_env: Path, vicap_setenv: Callable[[str, str | None], None]
) -> None:
    """Above VICAP_MAX_SWEEP_RUNS the sweep states its size and is refused; --force queues it."""
    vicap_setenv("max_sweep_runs", "5")
    db = make_store(vicap_env)
    with pytest.raises(
        InputError, match=r"6 runs \(3 grid point\(s\) × 2 repeat\(s\)\), more than VICAP_MAX_SWEEP_RUNS=5"
    ):
        create_sweep(db=db, name="big", family="cnn-lstm", dataset="s", options=TINY, grid={"lr": LRS}, repeats=2)
    with session_scope(db) as session:
        assert session.scalar(select(Job.id).limit(1)) is None  # nothing was queued
    plan = create_sweep(
        db=db, name="big", family="cnn-lstm", dataset="s", options=TINY, grid={"lr": LRS}, repeats=2, force=True
    )
    assert len(plan.child_ids) == 6
    assert get_settings().max_sweep_runs == 5


# -- the full sweep -----------------------------------------------------------------------------------


def test_six_children_train_evaluate_and_end_the_parent(swept: Swept) -> None:
    """Every run succeeded with its own seed and one val and one test evaluation; the parent ended succeeded at 6/6."""
    db, plan = swept.db, swept.plan
    assert statuses(db, plan.child_ids) == ["succeeded"] * 6
    parent = job_row(db, plan.parent_id or 0)
    assert (parent.status, parent.done, parent.total, parent.failed) == ("succeeded", 6, 6, 0)
    for child_id, (name, point, repeat, seed) in zip(plan.child_ids, plan.runs, strict=True):
        child = job_row(db, child_id)
        assert child.params["name"] == name and child.params["seed"] == seed == child.params["options"]["seed"]
        assert child.params["options"]["lr"] == point["lr"] and child.params["repeat"] == repeat
        with session_scope(db) as session:
            evaluations = [job_row(db, i) for i in child_job_ids(session=session, job_id=child_id)]
        assert sorted((e.kind, e.params["split"], e.status) for e in evaluations) == [
            ("evaluate", "test", "succeeded"),
            ("evaluate", "val", "succeeded"),
        ]
    assert resolve_model(db=db, name="sw-lr5e-3-r2").trained_by_job_id == plan.child_ids[3]


def test_the_table_has_one_row_per_grid_point_with_mean_and_std(swept: Swept) -> None:
    """3 rows of 2 runs each; the mean and sample std are those of the runs' own test scores; baseline beside them."""
    report = sweep_report(db=swept.db, name="sw")
    assert [p.point for p in report.points] == [{"lr": lr} for lr in LRS]
    assert report.baseline is not None and report.baseline["bleu_4"] is not None
    for point in report.points:
        runs = [r for r in report.runs if r.point == point.point]
        assert point.runs == point.succeeded == 2
        for metric in ("bleu_4", "rouge_l"):
            values = [getattr(r, metric) for r in runs]
            stat = point.stats[metric]
            assert stat is not None and stat.n == 2
            assert stat.mean == pytest.approx(statistics.fmean(values))
            assert stat.std == pytest.approx(statistics.stdev(values))
        assert point.stats["cider_d"] is None or point.stats["cider_d"].n == 2  # CIDEr-D once the column exists
        assert point.stats["trainable_parameters"] is not None and point.stats["trainable_parameters"].mean > 1000
        assert point.stats["best_epoch"] is not None and 1 <= point.stats["best_epoch"].mean <= 2  # epochs
        assert point.stats["val_loss"] is not None and point.stats["train_seconds"] is not None
        bleu_4, rouge_l = point.stats["bleu_4"], point.stats["rouge_l"]
        assert bleu_4 is not None and rouge_l is not None
        beats = bleu_4.mean > (report.baseline["bleu_4"] or 0.0) and rouge_l.mean > (report.baseline["rouge_l"] or 0.0)
        assert point.beats_baseline == beats
    print("\n" + "\n".join(f"{p.label}: BLEU-4 {p.stats['bleu_4']}" for p in report.points))


def test_promote_registers_a_run_under_a_plain_name(swept: Swept, module_home: Path) -> None:
    """The promoted model is a copy of the run's artifacts under models/NAME; a taken name is refused."""
    model_id = promote_model(db=swept.db, source="sw-lr1e-2-r1", name="sw-best")
    promoted, source = resolve_model(db=swept.db, name="sw-best"), resolve_model(db=swept.db, name="sw-lr1e-2-r1")
    assert promoted.id == model_id != source.id
    assert Path(promoted.artifact_dir) == module_home / "models" / "sw-best"
    assert (Path(promoted.artifact_dir) / "model.safetensors").read_bytes() == (
        Path(source.artifact_dir) / "model.safetensors"
    ).read_bytes()
    with session_scope(swept.db) as session:
        vocabulary = session.scalar(select(Model.vocabulary).where(Model.id == model_id))
    assert vocabulary is not None and Path(vocabulary).is_file() and "sw-best" in vocabulary
    with pytest.raises(InputError, match="already exists"):
        promote_model(db=swept.db, source="sw-lr1e-2-r1", name="sw-best")


# -- cancel and retry ---------------------------------------------------------------------------------


def test_cancelling_the_parent_cancels_every_child(vicap_env: Path) -> None:
    """jobs cancel PARENT: the parent and all its queued runs are cancelled; a cancelled run's message is skipped."""
    db = make_store(vicap_env)
    plan = create_sweep(db=db, name="c", family="cnn-lstm", dataset="s", options=TINY, grid={"lr": LRS}, repeats=1)
    assert job_row(db, plan.parent_id or 0).status == JobStatus.RUNNING
    with session_scope(db) as session:
        cancel_job(session=session, job_id=plan.parent_id or 0)
    assert statuses(db, [plan.parent_id or 0, *plan.child_ids]) == ["cancelled"] * 4
    assert run_job(db=db, job_id=plan.child_ids[0]).skipped


def test_retry_reruns_only_the_failed_children(vicap_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed run fails the parent with a summary; retry re-queues only it, and its success ends the parent."""
    db = make_store(vicap_env)
    plan = create_sweep(db=db, name="r", family="cnn-lstm", dataset="s", options=TINY, grid={"lr": [1e-2]}, repeats=2)
    real = sweeps.run_training

    def flaky(ctx: Any) -> str:
        if ctx.params.name == "r-lr1e-2-r2":
            raise InputError("out of memory (simulated)")
        return real(ctx)

    monkeypatch.setattr(sweeps, "run_training", flaky)
    for child_id in plan.child_ids:
        run_job(db=db, job_id=child_id)
    first, second = plan.child_ids
    parent = job_row(db, plan.parent_id or 0)
    assert statuses(db, plan.child_ids) == ["succeeded", "failed"]
    assert parent.status == "failed" and parent.done == 2 and parent.failed == 1
    assert parent.error == "1 of 2 runs did not succeed: r-lr1e-2-r2 failed: out of memory (simulated)"
    first_finished = job_row(db, first).finished_at

    with session_scope(db) as session:
        assert retry_job(session=session, job_id=plan.parent_id or 0) == [second]
    parent = job_row(db, plan.parent_id or 0)
    assert (parent.status, parent.done, parent.failed, parent.error) == ("running", 1, 0, None)
    assert statuses(db, plan.child_ids) == ["succeeded", "queued"]
    assert sweeps.queued_children(db=db, parent_id=plan.parent_id or 0) == [second]

    monkeypatch.setattr(sweeps, "run_training", real)
    assert run_job(db=db, job_id=second).ok
    assert job_row(db, first).finished_at == first_finished  # the succeeded run was not run again
    parent = job_row(db, plan.parent_id or 0)
    assert (parent.status, parent.done, parent.failed) == ("succeeded", 2, 0)
    with session_scope(db) as session, pytest.raises(InputError, match="no failed runs"):
        retry_job(session=session, job_id=plan.parent_id or 0)


def test_a_requeued_run_does_not_train_or_evaluate_again(swept: Swept, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose worker died after training (message delivered again) reuses its model and its evaluations."""
    child_id = swept.plan.child_ids[0]
    with session_scope(swept.db) as session:
        session.execute(update(Job).where(Job.id == child_id).values(status="running"))
        evaluations_before = len(child_job_ids(session=session, job_id=child_id))

    def no_training(ctx: Any) -> str:
        raise AssertionError("trained again")

    monkeypatch.setattr(sweeps, "run_training", no_training)
    assert run_job(db=swept.db, job_id=child_id).ok
    with session_scope(swept.db) as session:
        assert len(child_job_ids(session=session, job_id=child_id)) == evaluations_before
