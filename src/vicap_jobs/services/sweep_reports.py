"""Reading a sweep: its runs with their test scores, and one row per grid point (mean ± std over repeats).

``vicap-jobs sweeps show`` and the web view's sweep page print this; ``services/sweeps.py`` creates
and runs sweeps. Reading settles the parent first (a run given up by the reaper ends without it).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.status import JobStatus
from vicap_jobs.db.tables import Evaluation, Job, Model
from vicap_jobs.errors import NotFoundError, VicapError
from vicap_jobs.jobs.params import SweepParams, SweepTrainParams
from vicap_jobs.models.manifest import MANIFEST_FILE
from vicap_jobs.services.evaluation import ensure_baseline
from vicap_jobs.services.sweeps import METRICS, RUN_FILE, find_sweep_id, point_label, settle_sweep, sweep_names
from vicap_jobs.storage.locations import join
from vicap_jobs.storage.objects import read_text


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep, as ``sweeps show --format csv|json`` lists it; scores on a 0..1 scale, test split."""

    job_id: int
    model: str
    point: dict[str, Any]
    repeat: int
    seed: int
    status: str
    bleu_1: float | None = None
    bleu_2: float | None = None
    bleu_3: float | None = None
    bleu_4: float | None = None
    rouge_l: float | None = None
    cider_d: float | None = None
    best_epoch: int | None = None
    val_loss: float | None = None
    train_seconds: float | None = None
    trainable_parameters: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over the repeats that have the value."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class SweepPoint:
    """One row of ``sweeps show``: a grid point over its repeats."""

    point: dict[str, Any]
    runs: int
    succeeded: int
    stats: dict[str, Stat | None]  # metric or column → stat, None when no run has it
    beats_baseline: bool  # mean BLEU-4 and ROUGE-L above the blind baseline's, every run scored

    @property
    def label(self) -> str:
        return point_label(self.point)


@dataclass(frozen=True)
class SweepReport:
    name: str
    job_id: int
    status: str
    done: int
    total: int
    dataset: str
    runs: list[SweepRun]
    points: list[SweepPoint]
    baseline: dict[str, float | None] | None  # metric → blind baseline on test


def _stat(values: list[float | None]) -> Stat | None:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return Stat(statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0, len(present))


def sweep_report(*, db: Engine, name: str) -> SweepReport:
    """The sweep's runs with their test scores, and one row per grid point (mean ± std over repeats)."""
    parent_id = find_sweep_id(db=db, name=name)
    if parent_id is None:
        known = sweep_names(db=db)
        raise NotFoundError(f"no sweep named {name!r}" + (f"; sweeps: {', '.join(known)}" if known else ""))
    settle_sweep(db=db, parent_id=parent_id)
    with session_scope(db) as session:
        parent = session.get(Job, parent_id)
        assert parent is not None
        params = SweepParams.model_validate(parent.params)
        children = session.scalars(select(Job).where(Job.parent_id == parent_id).order_by(Job.id)).all()
        runs = [_run_row(session, child) for child in children]
        status, done, total, dataset_id = parent.status, parent.done, parent.total, parent.dataset_id
    baseline = None
    if dataset_id is not None:
        tokenization = str(params.options.get("tokenization") or "syllable")
        found = ensure_baseline(db=db, dataset_id=dataset_id, split="test", tokenization=tokenization)
        if found is not None:
            baseline = {metric: getattr(found[0], metric, None) for metric in METRICS}
    points: list[SweepPoint] = []
    for point in _points(params):
        mine = [run for run in runs if _same_point(run.point, point)]
        stats = {
            column: _stat([getattr(run, column) for run in mine])
            for column in (*METRICS, "best_epoch", "val_loss", "train_seconds", "trainable_parameters")
        }
        scored = all(run.bleu_4 is not None for run in mine)
        b4, rl = stats["bleu_4"], stats["rouge_l"]
        beats = bool(
            scored
            and baseline is not None
            and b4 is not None
            and rl is not None
            and b4.mean > (baseline["bleu_4"] or 0.0)
            and rl.mean > (baseline["rouge_l"] or 0.0)
        )
        points.append(
            SweepPoint(
                point=point,
                runs=len(mine),
                succeeded=sum(run.status == JobStatus.SUCCEEDED for run in mine),
                stats=stats,
                beats_baseline=beats,
            )
        )
    return SweepReport(name, parent_id, status, done, total, params.dataset, runs, points, baseline)


def _points(params: SweepParams) -> list[dict[str, Any]]:
    keys = list(params.grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(params.grid[k] for k in keys))]


def _same_point(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def _run_row(session: Session, child: Job) -> SweepRun:
    params = SweepTrainParams.model_validate(child.params)
    base: dict[str, Any] = {
        "job_id": child.id,
        "model": params.name,
        "point": params.point,
        "repeat": params.repeat,
        "seed": params.seed,
        "status": child.status,
        "error": child.error,
    }
    model = session.scalar(select(Model).where(Model.name == params.name, Model.trained_by_job_id == child.id))
    if model is None:
        return SweepRun(**base)
    evaluation = session.scalar(
        select(Evaluation)
        .where(Evaluation.model_id == model.id, Evaluation.split == "test", Evaluation.is_baseline.is_(False))
        .order_by(Evaluation.created_at.desc(), Evaluation.id.desc())
        .limit(1)
    )
    if evaluation is not None:
        base.update({metric: getattr(evaluation, metric, None) for metric in METRICS})
    manifest = _model_json(model, MANIFEST_FILE)
    meta = manifest.get("meta") if isinstance(manifest, dict) else None
    if isinstance(meta, dict):
        base["best_epoch"], base["val_loss"] = meta.get("best_epoch"), meta.get("val_loss")
    record = _model_json(model, RUN_FILE)
    if isinstance(record, dict):
        base["train_seconds"] = record.get("train_seconds")
        base["trainable_parameters"] = record.get("trainable_parameters")
    return SweepRun(**base)


def _model_json(model: Model, name: str) -> Any:
    """A small JSON file of the model's folder: from this host's disk, else from its published version
    (``VICAP_ARTIFACTS_URL``: a worker on another host trained it); None when neither has it or it is unreadable."""
    local = Path(model.artifact_dir) / name
    try:
        if local.is_file():
            return json.loads(local.read_text(encoding="utf-8"))
        if model.artifacts_url and name in (model.artifact_digests or {}):
            return json.loads(read_text(join(model.artifacts_url, name)))
    except (VicapError, OSError, ValueError):
        return None
    return None


def run_rows(report: SweepReport) -> list[dict[str, Any]]:
    """The raw per-run rows of ``--format csv|json``: grid options as columns, scores on a 0..1 scale."""
    keys = list(report.points[0].point) if report.points else []
    rows = []
    for run in report.runs:
        row: dict[str, Any] = {"sweep": report.name, "job": run.job_id, "model": run.model}
        row.update({key: run.point.get(key) for key in keys})
        row.update({"repeat": run.repeat, "seed": run.seed, "status": run.status})
        for column in (*METRICS, "best_epoch", "val_loss", "train_seconds", "trainable_parameters"):
            row[column] = getattr(run, column)
        row["baseline_bleu_4"] = report.baseline["bleu_4"] if report.baseline else None
        row["baseline_rouge_l"] = report.baseline["rouge_l"] if report.baseline else None
        row["error"] = run.error
        rows.append(row)
    return rows


RUN_FORMATS = ("csv", "json")


def render_runs(report: SweepReport, fmt: str) -> str:
    """The per-run rows of ``run_rows`` as a CSV (dicts and lists as JSON text) or a JSON list."""
    rows = run_rows(report)
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False, default=str) + "\n"
    if fmt != "csv":
        raise ValueError(f"unknown sweep run format {fmt!r}")
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()})
    return buffer.getvalue()
