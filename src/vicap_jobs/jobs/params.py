"""Validated parameters of the built-in job kinds, stored as JSON in ``jobs.params``.

A job's params are checked when it is created (a typo fails at submit time, not in the worker)
and parsed again when a worker runs it. Unknown keys are refused. The store-dependent checks
(does the model exist, is the name free) belong to the service that creates the job.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt


class JobParams(BaseModel):
    """Base of every kind's parameters: immutable, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in ``jobs.params``."""
        return self.model_dump(mode="json")


class CaptionParams(JobParams):
    """Caption every image of a folder with a registered model."""

    folder: str
    model: str
    engine: str | None  # None: the default engine, measured by the worker that runs the job
    recursive: bool = False
    batch_size: PositiveInt = 16
    chunk_size: PositiveInt = 256
    device: str | None = None  # "gpuN" when submitted with --gpu N (the queue is in jobs.queue)
    skipped_dirs: NonNegativeInt = 0
    skip_known: bool = False  # --skip-known: contents already captioned the same way were copied, not captioned
    reused: NonNegativeInt = 0  # how many images got a copy of an earlier caption (captions.reused_from_id)


class EvaluateParams(JobParams):
    """Caption a data set split with a model, then score it beside the blind baseline."""

    model: str
    dataset: str
    split: Literal["train", "val", "test"]
    tokenization: Literal["syllable", "word"] = "syllable"
    engine: str | None  # None: the default engine, measured by the worker that runs the job
    batch_size: PositiveInt = 16


class TrainParams(JobParams):
    """Train model ``name`` of ``family`` on ``dataset``; ``options`` are TrainOptions fields."""

    name: str
    family: str
    dataset: str
    options: dict[str, Any]


class SweepTrainParams(TrainParams):
    """One run of a sweep: train ``name`` (options include the grid point and the seed), then evaluate val and test."""

    sweep: str  # the sweep's name
    point: dict[str, Any]  # the grid point: option → value
    repeat: PositiveInt  # 1-based
    seed: int


class SweepParams(JobParams):
    """A hyper-parameter sweep: one ``sweep-train`` child per grid point × repeat (the parent runs nothing itself)."""

    name: str
    family: str
    dataset: str
    options: dict[str, Any]  # the base training options every run shares
    grid: dict[str, list[Any]]  # option → values; the runs are the product of the lists
    repeats: PositiveInt = 1
    seeds: list[int]  # one per repeat


class ExportParams(JobParams):
    """Export a registered model (ONNX), optionally quantized."""

    model: str
    quantize: str | None = None
