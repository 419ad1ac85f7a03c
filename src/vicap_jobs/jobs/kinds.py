"""The job-kind table: every kind of job declared once.

A kind says what its parameters are (validated at submit time), what runs it, which Celery task
name carries its messages, what one message carries (``unit``: the job id, or one chunk id), whether
``jobs retry`` re-runs its failed images, and, rarely, a fixed queue. The job system reads nothing
else about a kind: the lifecycle and the recovery rules use ``unit``; the worker registers one task
per kind and publishes to ``task``; the run skeleton (``vicap_jobs.services.runs``) calls ``run``.

``run`` is a ``"module:function"`` string for the built-in kinds, resolved only by the run skeleton,
so this table (low in the layers) never imports the services that do the work. Plugins
(``VICAP_PLUGINS``) may register kinds with a plain callable.

Adding a kind: its parameters class (``jobs/params.py``), its run function (one module in
``services/``), and one entry in ``BUILT_IN`` below. See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from vicap_jobs.errors import InputError, UnknownNameError, VicapError
from vicap_jobs.jobs.params import (
    CaptionParams,
    EvaluateParams,
    ExportParams,
    JobParams,
    SweepParams,
    SweepTrainParams,
    TrainParams,
)
from vicap_jobs.plugins import load_plugins, resolve

Unit = Literal["job", "chunk"]
Retry = Literal["images", "none"]
RunFunction = Callable[..., Any]


class JobFailed(VicapError):
    """Raised by a run function when the whole job cannot go on (e.g. its model cannot load)."""


@dataclass(frozen=True)
class JobKind:
    """One row of the job-kind table.

    unit "job": one message per job, carrying the job id; the run skeleton
    (``vicap_jobs.services.runs.run_job``) starts the job, calls ``run(ctx: RunContext)``, which does
    the whole job and returns its final message (or None), and records success or the failure.
    unit "chunk": one message per chunk of the job, carrying the chunk id; the worker calls
    ``run(db=, chunk_id=, engines=, worker_name=, heartbeat=)`` (``vicap_jobs.pipeline.runner.run_chunk``
    for captions), which claims, works, closes the chunk and ends the job once its chunks are drained.
    """

    name: str
    summary: str
    unit: Unit
    task: str
    params: type[JobParams]
    run: str | RunFunction
    retry: Retry = "none"
    queue: str | None = None  # a fixed queue for every job of this kind; None: shared, or gpu.N when pinned

    def parse(self, values: JobParams | Mapping[str, Any]) -> JobParams:
        """Validated parameters; a bad or unknown key is one InputError line naming it."""
        if isinstance(values, self.params):
            return values
        raw = values.to_json() if isinstance(values, JobParams) else dict(values)
        try:
            return self.params.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "params"
            raise InputError(f"invalid {self.name} job parameter {where!r}: {first['msg']}") from None

    def run_function(self) -> RunFunction:
        """The callable behind ``run`` (a ``"module:function"`` string is imported on first use)."""
        if callable(self.run):
            return self.run
        function: RunFunction = resolve(self.run)
        return function


BUILT_IN: tuple[JobKind, ...] = (
    JobKind(
        name="caption",
        summary="caption every image of a folder",
        unit="chunk",
        task="vicap.caption_chunk",
        params=CaptionParams,
        run="vicap_jobs.pipeline.runner:run_chunk",
        retry="images",
    ),
    JobKind(
        name="train",
        summary="train a model and register it",
        unit="job",
        task="vicap.train",
        params=TrainParams,
        run="vicap_jobs.services.training:run_training",
    ),
    JobKind(
        name="export",
        summary="export a model (ONNX, optionally int8), verified",
        unit="job",
        task="vicap.export",
        params=ExportParams,
        run="vicap_jobs.services.exporting:run_export",
    ),
    JobKind(
        name="evaluate",
        summary="caption a data set split and score it beside the blind baseline",
        unit="job",
        task="vicap.evaluate",
        params=EvaluateParams,
        run="vicap_jobs.services.evaluation:run_evaluation",
        retry="images",
    ),
    # A sweep has no message of its own: unit "chunk" with no chunks keeps the recovery rules off it;
    # its children (one message each) end it. ``jobs retry`` re-runs its failed children.
    JobKind(
        name="sweep",
        summary="a hyper-parameter sweep: one sweep-train child per grid point and repeat",
        unit="chunk",
        task="vicap.sweep",
        params=SweepParams,
        run="vicap_jobs.services.sweeps:run_sweep_message",
    ),
    JobKind(
        name="sweep-train",
        summary="one run of a sweep: train, then evaluate on val and test",
        unit="job",
        task="vicap.sweep_train",
        params=SweepTrainParams,
        run="vicap_jobs.services.sweeps:run_sweep_child",
    ),
)

_KINDS: dict[str, JobKind] = {kind.name: kind for kind in BUILT_IN}


def register_job_kind(kind: JobKind) -> JobKind:
    """Add a kind (a plugin's); a name already taken by another kind is an error."""
    existing = _KINDS.get(kind.name)
    if existing is not None and existing != kind:
        raise InputError(f"job kind {kind.name!r} is already registered")
    if any(other.task == kind.task and other.name != kind.name for other in _KINDS.values()):
        raise InputError(f"task name {kind.task!r} of job kind {kind.name!r} is already used by another kind")
    _KINDS[kind.name] = kind
    return kind


def job_kind_names() -> list[str]:
    """Every kind's name (plugins included), sorted."""
    load_plugins()
    return sorted(_KINDS)


def job_kinds() -> list[JobKind]:
    """Every kind (plugins included), sorted by name."""
    load_plugins()
    return [_KINDS[name] for name in sorted(_KINDS)]


def get_job_kind(name: str) -> JobKind:
    """The kind called ``name``; an unknown name lists the valid ones."""
    load_plugins()
    if name not in _KINDS:
        raise UnknownNameError("job kind", name, sorted(_KINDS))
    return _KINDS[name]


def kinds_with_unit(unit: Unit) -> tuple[str, ...]:
    """Names of the kinds whose messages carry ``unit`` ids (used in the recovery queries)."""
    return tuple(kind.name for kind in job_kinds() if kind.unit == unit)
