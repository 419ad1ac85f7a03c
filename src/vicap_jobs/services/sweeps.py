"""Hyper-parameter sweeps: a parent job and one run per grid point × repeat, each trained, then evaluated.

Design (built only from existing mechanisms):

- The **parent** (kind ``sweep``) is a job row with no message of its own (unit "chunk" with no chunks,
  so no recovery rule ever publishes it). It is marked running when created and ended by its last
  child. Its progress is children ended / children total.
- Each **run** is a child job of kind ``sweep-train`` (``TrainParams`` plus the sweep, grid point,
  repeat and seed): an independent message, so N workers run N runs at once, and a run whose worker
  died is requeued by the reaper like any job of unit "job". Its run function trains through the
  train kind's own ``run_training`` (same checkpoint, same models row), then creates two evaluate jobs
  (val, test) as *its* children and runs them in the same worker through the run skeleton. The
  evaluate jobs cannot be queued up front (their model does not exist yet), and services cannot
  publish (only ``worker.publish`` does), so running them in place is the simplest correct chain;
  they remain ordinary evaluate rows (scores in ``evaluations``, visible in ``jobs show``), and a
  requeued run skips what is already done (a registered model, a succeeded evaluation).
- A run **ends itself and settles its parent in one transaction** that first updates the parent
  row (a row lock): two runs ending at the same moment are serialized, so the last one always sees
  every sibling ended and ends the parent (succeeded if every run succeeded, else failed with a
  summary). ``settle_sweep`` does the same from ``sweeps show`` for a run the reaper gave up on.
- ``jobs cancel PARENT`` cancels every open descendant (``jobs.lifecycle.cancel_job``); a running run
  stops after its current step (training, or one evaluation). ``jobs retry PARENT`` re-queues only the
  failed runs (``jobs.lifecycle.retry_job``).

Reading a sweep back (the ``sweeps show`` table) is ``services/sweep_reports.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.status import FINISHED_JOB, JobStatus
from vicap_jobs.db.tables import Job, Model
from vicap_jobs.errors import InputError, VicapError
from vicap_jobs.jobs.context import RunContext
from vicap_jobs.jobs.kinds import JobFailed
from vicap_jobs.jobs.lifecycle import beat_job, create_job, fail_job, start_job, succeed_job
from vicap_jobs.jobs.params import SweepParams, SweepTrainParams
from vicap_jobs.models.registry import get_family
from vicap_jobs.services.artifacts import publish_artifacts
from vicap_jobs.services.datasets import get_dataset, split_references
from vicap_jobs.services.evaluation import create_evaluate_job
from vicap_jobs.services.models import ensure_name_free, resolve_model
from vicap_jobs.services.runs import run_job
from vicap_jobs.services.training import PRETRAINED_PATIENCE, run_training, train_options
from vicap_jobs.settings import get_settings
from vicap_jobs.training.options import TrainOptions

EVAL_SPLITS = ("val", "test")
RUN_FILE = "sweep_run.json"  # written next to a run's checkpoint: training time, trainable parameters
# Options a grid may not vary: the seed comes from --repeats, the rest are not hyper-parameters.
NOT_IN_GRID = frozenset({"seed", "device", "progress_bar", "config_overrides"})
METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d")


# -- creation -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep will run (before queueing) or runs (``parent_id`` and ``child_ids`` once created)."""

    name: str
    points: list[dict[str, Any]]
    repeats: int
    seeds: list[int]
    runs: list[tuple[str, dict[str, Any], int, int]]  # (model name, grid point, repeat 1.., seed)
    parent_id: int | None = None
    child_ids: tuple[int, ...] = ()

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    def describe(self) -> str:
        """'6 runs (3 grid points × 2 repeats)'."""
        return f"{self.n_runs} runs ({len(self.points)} grid point(s) × {self.repeats} repeat(s))"


def parse_grid(texts: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=1e-3,5e-4", "batch_size=32,64"]`` → {"lr": [0.001, 0.0005], "batch_size": [32, 64]}; bad text: one line."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip().replace("-", "_")
        values = [_parse_value(part.strip()) for part in raw.split(",") if part.strip()]
        if not sep or not key.isidentifier() or not values:
            raise InputError(f"--grid expects option=value,value,... (e.g. lr=1e-3,5e-4), got {text!r}")
        if key in grid:
            raise InputError(f"--grid {key} is given twice; list all its values once")
        grid[key] = values
    return grid


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def plan_sweep(
    *,
    name: str,
    family: str,
    options: Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]],
    repeats: int = 1,
    seeds: Sequence[int] | None = None,
) -> SweepPlan:
    """Check the grid against the training options (one line per mistake) and list the runs; creates nothing."""
    if not grid:
        raise InputError("a sweep needs at least one --grid option=value,value")
    if repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {repeats}")
    known = {f.name: f for f in dataclasses.fields(TrainOptions)}
    for key, values in grid.items():
        if key not in known:
            raise InputError(f"unknown training option {key!r} in --grid; options: {', '.join(sorted(known))}")
        if key in NOT_IN_GRID:
            hint = " (use --repeats: each repeat gets its own seed)" if key == "seed" else ""
            raise InputError(f"--grid cannot vary {key!r}{hint}")
        if not values:
            raise InputError(f"--grid {key} has no values")
        if len(set(map(repr, values))) != len(values):
            raise InputError(f"--grid {key} lists a value twice")
    base_seed = int(options.get("seed") or 0)
    seed_list = list(seeds) if seeds is not None else [base_seed + r for r in range(repeats)]
    if len(seed_list) != repeats or len(set(seed_list)) != repeats:
        raise InputError(f"give {repeats} different seeds, one per repeat (got {seed_list})")
    keys = list(grid)
    points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
    for point in points:
        typed = {key: _typed(key, value, known[key].default) for key, value in point.items()}
        point.update(typed)
        try:
            train_options({**options, **point}, check_device=False).validate()
        except VicapError as exc:
            raise InputError(f"grid point {point_label(point)}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise InputError(f"grid point {point_label(point)}: {exc}") from None
    runs = [
        (run_name(name, point, repeat), point, repeat, seed_list[repeat - 1])
        for point in points
        for repeat in range(1, repeats + 1)
    ]
    return SweepPlan(name=name, points=points, repeats=repeats, seeds=seed_list, runs=runs)


def _typed(key: str, value: Any, default: Any) -> Any:
    """A grid value in the option's type (an int for a float option is fine); a wrong type is one line."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InputError(f"--grid {key} takes true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"--grid {key} takes numbers, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"--grid {key} takes whole numbers, got {value!r}")
        return value
    return value


def format_value(value: Any) -> str:
    """A grid value as it appears in a model name: 5e-4, 0.1, 32, true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        plain = f"{value:g}"
        mantissa, exponent = f"{value:e}".split("e")
        scientific = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return scientific if value != 0 and len(scientific) <= len(plain) else plain  # 5e-4, 1e-2, 0.25, 32.0
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(value))


def point_label(point: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={format_value(value)}" for key, value in point.items())


def run_name(sweep: str, point: Mapping[str, Any], repeat: int) -> str:
    """The model name of one run, derived from the sweep: ``NAME-lr5e-4-r1``, ``NAME-lr5e-4-batch-size32-r2``."""
    parts = [f"{key.replace('_', '-')}{format_value(value)}" for key, value in point.items()]
    return "-".join([sweep, *parts, f"r{repeat}"])


def create_sweep(
    *,
    db: Engine,
    name: str,
    family: str,
    dataset: str,
    options: dict[str, Any],
    grid: Mapping[str, Sequence[Any]],
    repeats: int = 1,
    seeds: Sequence[int] | None = None,
    force: bool = False,
    gpu: int | None = None,
) -> SweepPlan:
    """A running parent job and one queued ``sweep-train`` child per run (not published); refuses big grids unless forced."""
    spec = get_family(family)
    ds = get_dataset(db=db, name=dataset)
    if spec.pretrained:
        options = {"patience": PRETRAINED_PATIENCE, **options}
    plan = plan_sweep(name=name, family=family, options=options, grid=grid, repeats=repeats, seeds=seeds)
    limit = get_settings().max_sweep_runs
    if plan.n_runs > limit and not force:
        raise InputError(
            f"sweep {name!r} has {plan.describe()}, more than VICAP_MAX_SWEEP_RUNS={limit}; "
            "pass --force to queue it anyway"
        )
    if spec.pretrained:
        # Imports torch: only a vision-language sweep checks its folders and family options now.
        from vicap_jobs.training.pretrained import check_pretrained_options

        check_pretrained_options(family, train_options(options, check_device=False))
    for split in EVAL_SPLITS:
        if not split_references(db=db, dataset_id=ds.id, split=split):
            raise InputError(f"data set {dataset!r} has no {split} split; a sweep evaluates every run on val and test")
    if find_sweep_id(db=db, name=name) is not None:
        raise InputError(f"a sweep named {name!r} already exists; pick another name")
    for model_name, *_ in plan.runs:
        ensure_name_free(db=db, name=model_name)
    base = _jsonable(dataclasses.asdict(train_options(options, check_device=False)))
    given = {key: value for key, value in base.items() if key in options}
    params = SweepParams(
        name=name,
        family=family,
        dataset=ds.name,
        options=given,
        grid={key: _column(plan.points, key) for key in grid},
        repeats=repeats,
        seeds=plan.seeds,
    )
    with session_scope(db) as session:
        parent_id = create_job(session=session, kind="sweep", params=params, dataset_id=ds.id, total=plan.n_runs)
        start_job(session=session, job_id=parent_id)
        session.execute(update(Job).where(Job.id == parent_id).values(progress_message=f"{plan.describe()}"))
        child_ids = []
        for model_name, point, repeat, seed in plan.runs:
            run_options = _jsonable(
                dataclasses.asdict(train_options({**options, **point, "seed": seed}, check_device=False))
            )
            child = SweepTrainParams(
                name=model_name,
                family=family,
                dataset=ds.name,
                options=run_options,
                sweep=name,
                point=point,
                repeat=repeat,
                seed=seed,
            )
            child_ids.append(
                create_job(
                    session=session,
                    kind="sweep-train",
                    params=child,
                    dataset_id=ds.id,
                    total=int(run_options["epochs"]),
                    parent_id=parent_id,
                    gpu=gpu,
                )
            )
    return dataclasses.replace(plan, parent_id=parent_id, child_ids=tuple(child_ids))


def _column(points: list[dict[str, Any]], key: str) -> list[Any]:
    return list(dict.fromkeys(point[key] for point in points))


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def find_sweep_id(*, db: Engine, name: str) -> int | None:
    """The id of the newest sweep called ``name``, or None."""
    with session_scope(db) as session:
        rows = session.execute(select(Job.id, Job.params).where(Job.kind == "sweep").order_by(Job.id.desc())).all()
    return next((job_id for job_id, params in rows if (params or {}).get("name") == name), None)


def sweep_names(*, db: Engine) -> list[str]:
    with session_scope(db) as session:
        rows = session.scalars(select(Job.params).where(Job.kind == "sweep").order_by(Job.id)).all()
    return list(dict.fromkeys(str((params or {}).get("name")) for params in rows))


# -- running ------------------------------------------------------------------------------------------


def run_sweep_message(**_: Any) -> None:
    """The sweep kind's run function: never called (a sweep publishes no message; its children do the work)."""
    raise JobFailed("a sweep job has no messages of its own; its sweep-train children are the work")


def run_sweep_child(ctx: RunContext) -> str | None:
    """The sweep-train kind's run function: train (unless done), evaluate val and test, end itself and settle the parent."""
    params = ctx.params
    assert isinstance(params, SweepTrainParams)
    parent_id = ctx.job.parent_id
    try:
        message = _train_and_evaluate(ctx, params)
    except OperationalError:
        raise  # the store is unreachable: not the run's fault, the worker's task retries it
    except Exception as exc:
        reason = str(exc) if isinstance(exc, VicapError) else f"{type(exc).__name__}: {exc}"
        _end_run(ctx.db, ctx.job_id, parent_id, ok=False, text=reason)
        raise
    _end_run(ctx.db, ctx.job_id, parent_id, ok=True, text=message)
    return message


def _train_and_evaluate(ctx: RunContext, params: SweepTrainParams) -> str | None:
    artifact_dir = _own_model_dir(ctx.db, params.name, ctx.job_id)
    if artifact_dir is None or not (artifact_dir / RUN_FILE).is_file():
        started = time.monotonic()
        summary = run_training(ctx)
        seconds = time.monotonic() - started
        artifact_dir = _own_model_dir(ctx.db, params.name, ctx.job_id)
        if artifact_dir is None:
            raise InputError(f"training {params.name} registered no model")
        options = train_options(params.options, check_device=False)
        record = {
            "train_seconds": round(seconds, 3),
            "trainable_parameters": trainable_parameters(artifact_dir, frozen_backbone=not options.finetune_backbone),
            "seed": params.seed,
            "summary": summary,
        }
        (artifact_dir / RUN_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    else:
        summary = json.loads((artifact_dir / RUN_FILE).read_text(encoding="utf-8")).get("summary")
    # The run record travels with the model (VICAP_ARTIFACTS_URL set): reports on other hosts read it from there.
    publish_artifacts(db=ctx.db, model_id=resolve_model(db=ctx.db, name=params.name).id)
    parts = [summary or "trained"]
    for split in EVAL_SPLITS:
        if ctx.cancelled():
            return None
        eval_id = _evaluation_job(ctx.db, ctx.job_id, split) or create_evaluate_job(
            db=ctx.db, model=params.name, dataset=params.dataset, split=split, parent_id=ctx.job_id
        )
        ctx.report(message=f"evaluating {params.name} on {split} (job {eval_id})")

        def beat(eval_id: int = eval_id) -> None:
            with session_scope(ctx.db) as session:
                beat_job(session=session, job_id=eval_id)
            ctx.heartbeat()

        outcome = run_job(
            db=ctx.db,
            job_id=eval_id,
            device=ctx.device,
            worker_name=ctx.worker_name,
            engines=ctx.engines,
            heartbeat=beat,
        )
        if outcome.status == JobStatus.CANCELLED:
            return None
        if not outcome.ok:
            raise InputError(f"evaluation on {split} (job {eval_id}) {outcome.status}: {outcome.error}")
        if split == "test" and outcome.message:
            parts.append(f"test {outcome.message}")
    return "; ".join(parts)


def _own_model_dir(db: Engine, name: str, job_id: int) -> Path | None:
    """The artifact folder of model ``name`` when this job registered it."""
    with session_scope(db) as session:
        row = session.execute(select(Model.artifact_dir, Model.trained_by_job_id).where(Model.name == name)).first()
    if row is None or row.trained_by_job_id != job_id:
        return None
    return Path(row.artifact_dir)


def _evaluation_job(db: Engine, run_id: int, split: str) -> int | None:
    """A succeeded evaluate job of this run on ``split`` (a requeued run does not evaluate twice)."""
    with session_scope(db) as session:
        rows = session.execute(
            select(Job.id, Job.params).where(
                Job.parent_id == run_id, Job.kind == "evaluate", Job.status == JobStatus.SUCCEEDED
            )
        ).all()
    return next((job_id for job_id, p in rows if (p or {}).get("split") == split), None)


def _end_run(db: Engine, run_id: int, parent_id: int | None, *, ok: bool, text: str | None) -> None:
    """End the run and settle its parent in one transaction, serialized on the parent row."""
    with session_scope(db) as session:
        if parent_id is not None:
            # Lock the parent row first: runs ending at once settle one after the other.
            session.execute(update(Job).where(Job.id == parent_id).values(heartbeat_at=utcnow()))
        if ok:
            succeed_job(session=session, job_id=run_id, message=text)
        else:
            fail_job(session=session, job_id=run_id, reason=text or "failed")
        if parent_id is not None:
            _settle(session, parent_id)


def settle_sweep(*, db: Engine, parent_id: int) -> None:
    """Record the parent's progress and end it when every run has ended (safe to call any time)."""
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == parent_id).values(heartbeat_at=utcnow()))
        _settle(session, parent_id)


def _settle(session: Session, parent_id: int) -> None:
    children = session.execute(
        select(Job.status, Job.params, Job.error).where(Job.parent_id == parent_id).order_by(Job.id)
    ).all()
    ended = [c for c in children if c.status in FINISHED_JOB]
    bad = [c for c in ended if c.status != JobStatus.SUCCEEDED]
    session.execute(
        update(Job)
        .where(Job.id == parent_id, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        .values(done=len(ended), failed=len(bad), total=len(children))
    )
    if len(ended) < len(children):
        return
    if not bad:
        succeed_job(session=session, job_id=parent_id, message=f"all {len(children)} runs succeeded")
        return
    notes = "; ".join(f"{(c.params or {}).get('name')} {c.status}: {c.error or ''}".strip() for c in bad[:3])
    more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
    fail_job(
        session=session, job_id=parent_id, reason=f"{len(bad)} of {len(children)} runs did not succeed: {notes}{more}"
    )


# -- helpers of runs and retries ------------------------------------------------------------------------


def trainable_parameters(artifact_dir: Path, *, frozen_backbone: bool = False) -> int:
    """Parameters in the checkpoint's safetensors files (read from their headers, no torch), minus a frozen backbone."""
    total = 0
    for path in sorted(Path(artifact_dir).rglob("*.safetensors")):
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for key, entry in header.items():
            if key == "__metadata__" or (frozen_backbone and key.split(".")[0] == "backbone"):
                continue
            total += math.prod(entry.get("shape") or [1])
    return total


def queued_children(*, db: Engine, parent_id: int) -> list[int]:
    """The sweep's runs waiting in the store (to publish after a retry)."""
    with session_scope(db) as session:
        return list(
            session.scalars(
                select(Job.id).where(Job.parent_id == parent_id, Job.status == JobStatus.QUEUED).order_by(Job.id)
            )
        )
