"""Exporting a registered model to ONNX (optionally int8), verified, published (``VICAP_ARTIFACTS_URL``), recorded on its models row."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select

from vicap_jobs.data.images import load_rgb
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Image
from vicap_jobs.engines.onnx_format import EXPORT_FORMAT, default_onnx_dir
from vicap_jobs.errors import InputError
from vicap_jobs.export import QUANTIZATIONS
from vicap_jobs.jobs.context import RunContext
from vicap_jobs.jobs.lifecycle import create_job
from vicap_jobs.jobs.params import ExportParams
from vicap_jobs.metrics.scores import score_captions
from vicap_jobs.models.registry import get_family
from vicap_jobs.services.artifacts import publish_artifacts
from vicap_jobs.services.datasets import split_references
from vicap_jobs.services.models import (
    ModelRef,
    model_artifacts,
    model_by_id,
    move_artifact_dir,
    record_export,
    resolve_model,
)
from vicap_jobs.services.runs import raise_unless_succeeded, run_job
from vicap_jobs.settings import get_settings

if TYPE_CHECKING:
    from vicap_jobs.export.verify import EvalFn

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256


def create_export_job(*, db: Engine, model: str, quantize: str | None = None) -> int:
    """A queued export job, validated now (the model exists, its family exports to ONNX, the quantization)."""
    ref = resolve_model(db=db, name=model)
    spec = get_family(ref.family)
    if EXPORT_FORMAT not in spec.exports:
        raise InputError(
            f"model {ref.name!r} ({ref.family}) has no ONNX export; it runs with the {spec.default_engine} engine"
        )
    if quantize not in (None, *QUANTIZATIONS):
        raise InputError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}")
    with session_scope(db) as session:
        return create_job(
            session=session,
            kind="export",
            params=ExportParams(model=ref.name, quantize=quantize),
            model_id=ref.id,
            total=1,
        )


def run_export(ctx: RunContext) -> str:
    """The export kind's run function: export, verify torch vs onnxruntime, record the export; returns the summary."""
    from vicap_jobs.export.verify import export_and_verify  # heavy: torch, onnx, onnxruntime

    params = ctx.params
    assert isinstance(params, ExportParams)
    if ctx.job.model_id is None:
        raise InputError(f"export job {ctx.job_id} has no model")
    ref = model_by_id(db=ctx.db, model_id=ctx.job.model_id)
    quantize = params.quantize
    checkpoint = _checkpoint_here(ctx.db, ref)
    out_dir = default_onnx_dir(checkpoint)
    calibration = _calibration_images(ctx.db, ref.dataset_id) if quantize else []
    eval_fn = _test_bleu_4(ctx.db, ref.dataset_id) if quantize else None
    report = export_and_verify(checkpoint, out_dir, quantize=quantize, calibration_images=calibration, eval_fn=eval_fn)
    # A new published version with the exports (VICAP_ARTIFACTS_URL set), before the row says "exported": storage
    # that stays down fails the job and leaves the row on its previous, complete version.
    publish_artifacts(db=ctx.db, model_id=ref.id)
    # The fp32 folder is recorded; its int8 variant sits in <onnx>/int8 for the onnx-int8 and openvino-int8 engines.
    record_export(db=ctx.db, model_id=ref.id, onnx_path=str(out_dir), quantized=report.quantize is not None)
    ctx.report(done=1)
    return describe_export(report)


def _checkpoint_here(db: Engine, ref: ModelRef) -> Path:
    """The checkpoint folder this host exports into: the row's, or, for a model published from another
    host, a copy of its verified version under this host's models folder (then recorded as its folder)."""
    folder = Path(ref.artifact_dir)
    if folder.is_dir() or not ref.artifacts_url:
        return folder
    target = get_settings().models_dir / ref.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model_artifacts(ref).checkpoint_dir, target)
    move_artifact_dir(db=db, model_id=ref.id, artifact_dir=str(target))
    return target


def export_model(*, db: Engine, model: str, quantize: str | None = None) -> str:
    """Export in this process (the `export onnx` command), tracked as a job like a queued one; returns its summary."""
    job_id = create_export_job(db=db, model=model, quantize=quantize)
    outcome = raise_unless_succeeded(run_job(db=db, job_id=job_id, in_process=True))
    return outcome.message or f"job {job_id} succeeded"


def _calibration_images(db: Engine, dataset_id: int | None) -> list[Path]:
    """A few hundred training images of the model's data set, for static int8 calibration."""
    if dataset_id is None:
        raise InputError("int8 quantization needs calibration images; this model has no training data set recorded")
    with session_scope(db) as session:
        paths = session.scalars(
            select(Image.path)
            .where(Image.dataset_id == dataset_id, Image.split == "train", Image.sha256.is_not(None))
            .order_by(Image.id)
            .limit(CALIBRATION_IMAGES)
        )
        return [Path(p) for p in paths]


def _test_bleu_4(db: Engine, dataset_id: int | None, limit: int = 300) -> EvalFn | None:
    """A callback scoring an engine's captions on the model's test split (BLEU-4), to report what int8 costs."""
    if dataset_id is None:
        return None
    references = split_references(db=db, dataset_id=dataset_id, split="test")
    with session_scope(db) as session:
        rows = session.execute(
            select(Image.id, Image.path)
            .where(Image.dataset_id == dataset_id, Image.split == "test", Image.sha256.is_not(None))
            .order_by(Image.id)
            .limit(limit)
        ).all()
    if not rows:
        return None

    def bleu_4(engine: Any) -> float:
        predictions: dict[int, str] = {}
        for start in range(0, len(rows), 16):
            batch = rows[start : start + 16]
            texts = engine.caption([load_rgb(path) for _, path in batch])
            predictions.update({image_id: text for (image_id, _), text in zip(batch, texts, strict=True)})
        scores = score_captions(predictions, {k: references[k] for k in predictions}, tokenization="syllable")
        return scores.bleu_4

    return bleu_4


def describe_export(report: Any) -> str:
    """One line for the job row and the terminal: paths, parity and, for int8, speed and BLEU-4 change."""
    text = getattr(report, "summary", None)
    line = str(text()) if callable(text) else str(text or report)
    quantized = getattr(report, "quantize", None)
    if quantized is not None and quantized.speedup < 1.0:
        line += (
            f". NOTE: int8 is {quantized.speedup:.2f}× the fp32 speed on this CPU (integer kernels are not faster"
            " here); it is served anyway as asked: re-export without --quantize to serve fp32"
        )
    return line
