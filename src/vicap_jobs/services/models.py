"""Registered models: lookup by name, engine choice, registration after training/export."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import Engine, select

from vicap_jobs.data.images import load_rgb
from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Image, Model
from vicap_jobs.engines.choice import MAX_IMAGES, EngineChoice, choose_engine
from vicap_jobs.engines.onnx_format import EXPORT_FORMAT
from vicap_jobs.errors import InputError, NotFoundError, VicapError
from vicap_jobs.models.manifest import ModelArtifacts
from vicap_jobs.models.registry import INT8_EXPORT_ENGINES, ONNX_EXPORT_ENGINES, get_family
from vicap_jobs.services.artifacts import local_artifacts, publish_artifacts
from vicap_jobs.settings import get_settings


@dataclass(frozen=True)
class ModelRef:
    """A plain copy of a models row (no ORM session attached)."""

    id: int
    name: str
    family: str
    backbone: str | None
    artifact_dir: str
    onnx_path: str | None
    onnx_quantized: bool
    hyperparameters: dict[str, Any]
    tokenization: str | None
    image_size: int | None
    dataset_id: int | None
    created_at: datetime
    exported_at: datetime | None
    trained_by_job_id: int | None = None
    artifacts_url: str | None = None  # the published version's folder in object storage (None: local only)
    artifact_digests: dict[str, str] | None = None  # {path relative to artifact_dir: sha256} when published


def _ref(row: Model) -> ModelRef:
    return ModelRef(
        id=row.id,
        name=row.name,
        family=row.family,
        backbone=row.backbone,
        artifact_dir=row.artifact_dir,
        onnx_path=row.onnx_path,
        onnx_quantized=bool(row.onnx_quantized),
        hyperparameters=dict(row.hyperparameters or {}),
        tokenization=row.tokenization,
        image_size=row.image_size,
        dataset_id=row.dataset_id,
        created_at=row.created_at,
        exported_at=row.exported_at,
        trained_by_job_id=row.trained_by_job_id,
        artifacts_url=row.artifacts_url,
        artifact_digests=dict(row.artifact_digests) if row.artifact_digests else None,
    )


def resolve_model(*, db: Engine, name: str | None) -> ModelRef:
    """The model called ``name``, or the newest one when ``name`` is None."""
    with session_scope(db) as session:
        if name is None:
            row = session.scalar(select(Model).order_by(Model.created_at.desc(), Model.id.desc()).limit(1))
            if row is None:
                raise NotFoundError(
                    "no model is registered yet; train one (`vicap-jobs train ...`) or run `vicap-jobs demo`"
                )
            return _ref(row)
        row = session.scalar(select(Model).where(Model.name == name))
        if row is None:
            known = list(session.scalars(select(Model.name).order_by(Model.name)))
            hint = f"; registered: {', '.join(known)}" if known else "; none is registered yet"
            raise NotFoundError(f"no model named {name!r}{hint}")
        return _ref(row)


def model_by_id(*, db: Engine, model_id: int) -> ModelRef:
    with session_scope(db) as session:
        row = session.get(Model, model_id)
        if row is None:
            raise NotFoundError(f"no model with id {model_id}")
        return _ref(row)


def list_models(*, db: Engine) -> list[ModelRef]:
    with session_scope(db) as session:
        return [_ref(row) for row in session.scalars(select(Model).order_by(Model.name))]


def model_artifacts(model: ModelRef) -> ModelArtifacts:
    """Where this host reads the model's files: its checkpoint and the ONNX export recorded on its row.

    A published model (``artifacts_url`` on its row) is read from this host's verified cache,
    downloaded first if needed (``services.artifacts``); any other from the paths on its row.
    """
    return local_artifacts(model)


def calibration_sample(*, db: Engine, model: ModelRef, limit: int = MAX_IMAGES) -> list[PILImage.Image]:
    """Up to ``limit`` readable validation photos of the model's data set (its test split if it has no val), in id order.

    The engine choice compares engines on these: agreement on the photos a model was made for says more
    than agreement on synthetic colour fields. Empty when the model has no data set recorded.
    """
    if model.dataset_id is None:
        return []
    with session_scope(db) as session:
        for split in ("val", "test"):
            paths = list(
                session.scalars(
                    select(Image.path)
                    .where(Image.dataset_id == model.dataset_id, Image.split == split)
                    .order_by(Image.id)
                    .limit(limit)
                )
            )
            if paths:
                break
    images = []
    for path in paths:
        with contextlib.suppress(VicapError, OSError):
            images.append(load_rgb(path))
    return images


def default_engine(
    model: ModelRef, *, device: str = "cpu", images: Sequence[PILImage.Image] | None = None
) -> EngineChoice:
    """The engine ``model`` captions with when none is asked for, with the reason.

    A family that prefers other engines when faster (CNN+LSTM: OpenVINO, int8, bf16;
    vision-language: int8) gets the choice measured once on this machine for these
    files (``engines/choice.py``): against its default engine, or against torch for a
    CNN+LSTM model that has no ONNX export yet.
    """
    spec = get_family(model.family)
    reference = spec.default_engine
    if reference == EXPORT_FORMAT and not model.onnx_path:
        reference = "torch"
    if not spec.prefer:
        why = "the family's default" if reference == spec.default_engine else "no ONNX export yet"
        return EngineChoice(reference, f"{reference}: {why}", reference)
    threads = get_settings().torch_threads
    return choose_engine(
        model_artifacts(model), spec, device=device, threads=threads, reference=reference, images=images
    )


def resolve_engine_name(
    model: ModelRef,
    requested: str | None,
    *,
    device: str = "cpu",
    images: Sequence[PILImage.Image] | None = None,
) -> str:
    """The engine to caption with: the requested one if the family supports it, else :func:`default_engine`'s.

    device: where the job will run ("cpu", "cuda:N"): a measured default is measured there,
    on ``images`` when given (:func:`calibration_sample`).
    """
    spec = get_family(model.family)
    if requested is None:
        return default_engine(model, device=device, images=images).engine
    spec.check_engine(requested)
    if requested in ONNX_EXPORT_ENGINES and not model.onnx_path:
        raise InputError(
            f"model {model.name!r} has no ONNX export yet; run `vicap-jobs export onnx {model.name}` or use --engine torch"
        )
    if requested in INT8_EXPORT_ENGINES and not model.onnx_quantized:
        raise InputError(
            f"engine {requested!r} runs the int8 export, which model {model.name!r} has not; "
            f"run `vicap-jobs export onnx {model.name} --quantize int8`"
        )
    return requested


def engine_for_job(model: ModelRef, requested: str | None) -> str | None:
    """The engine a job records at submit time; None ("measured on the worker") for a measured default.

    A family whose default is measured (its registry line prefers an engine when faster) is
    measured by the worker that runs the job, on its own device and CPU, not by the machine
    that submits it (``EngineCache.get`` resolves None with :func:`resolve_engine_name`).
    Every other request is resolved and checked now.
    """
    if requested is None and get_family(model.family).prefer:
        return None
    return resolve_engine_name(model, requested)


def register_model(
    *,
    db: Engine,
    name: str,
    family: str,
    backbone: str | None,
    artifact_dir: str,
    hyperparameters: dict[str, Any],
    vocabulary: str | None,
    tokenization: str | None,
    image_size: int | None,
    dataset_id: int | None,
    trained_by_job_id: int | None,
) -> int:
    """Insert (or replace the artifacts of) model ``name``; returns its id."""
    with session_scope(db) as session:
        row = session.scalar(select(Model).where(Model.name == name))
        if row is None:
            row = Model(name=name)
            session.add(row)
        row.family, row.backbone, row.artifact_dir = family, backbone, artifact_dir
        row.hyperparameters, row.vocabulary, row.tokenization = hyperparameters, vocabulary, tokenization
        row.image_size, row.dataset_id, row.trained_by_job_id = image_size, dataset_id, trained_by_job_id
        row.onnx_path, row.onnx_quantized, row.exported_at = None, False, None
        row.artifacts_url, row.artifact_digests = None, None  # new files: published again by the caller
        session.flush()
        return row.id


def record_export(*, db: Engine, model_id: int, onnx_path: str, quantized: bool) -> None:

    with session_scope(db) as session:
        row = session.get(Model, model_id)
        if row is None:
            raise NotFoundError(f"no model with id {model_id}")
        row.onnx_path, row.onnx_quantized, row.exported_at = onnx_path, quantized, utcnow()


def move_artifact_dir(*, db: Engine, model_id: int, artifact_dir: str) -> None:
    """Record that the model's files are now written in ``artifact_dir`` on this host (its ONNX folder moves along).

    For a model published from another host that this host writes a new version of (an export).
    """
    with session_scope(db) as session:
        row = session.get(Model, model_id)
        if row is None:
            raise NotFoundError(f"no model with id {model_id}")
        old = Path(row.artifact_dir)
        if row.onnx_path and Path(row.onnx_path).is_relative_to(old):
            row.onnx_path = str(Path(artifact_dir) / Path(row.onnx_path).relative_to(old))
        if row.vocabulary and Path(row.vocabulary).is_relative_to(old):
            row.vocabulary = str(Path(artifact_dir) / Path(row.vocabulary).relative_to(old))
        row.artifact_dir = artifact_dir


def ensure_name_free(*, db: Engine, name: str) -> None:
    with session_scope(db) as session:
        if session.scalar(select(Model.id).where(Model.name == name)) is not None:
            raise InputError(f"a model named {name!r} already exists; pick another name")


def promote_model(*, db: Engine, source: str, name: str) -> int:
    """Register a copy of model ``source``'s artifacts under the plain name ``name`` (e.g. a sweep's best run).

    The copy is taken from this host's files of ``source`` (its verified cache when it was published
    from another host) and published under ``name`` when ``VICAP_ARTIFACTS_URL`` is set.
    """
    import shutil  # only promoting copies folders

    model = resolve_model(db=db, name=source)
    ensure_name_free(db=db, name=name)
    target = get_settings().models_dir / name
    if target.exists():
        raise InputError(f"{target} already exists; remove it or pick another name")
    shutil.copytree(local_artifacts(model).checkpoint_dir, target)
    with session_scope(db) as session:
        row = session.get(Model, model.id)
        assert row is not None
        vocabulary = row.vocabulary
    if vocabulary and Path(vocabulary).is_relative_to(model.artifact_dir):
        vocabulary = str(target / Path(vocabulary).relative_to(model.artifact_dir))
    model_id = register_model(
        db=db,
        name=name,
        family=model.family,
        backbone=model.backbone,
        artifact_dir=str(target),
        hyperparameters=model.hyperparameters,
        vocabulary=vocabulary,
        tokenization=model.tokenization,
        image_size=model.image_size,
        dataset_id=model.dataset_id,
        trained_by_job_id=model.trained_by_job_id,
    )
    publish_artifacts(db=db, model_id=model_id)
    return model_id
