"""Training as a job: read the data set from the store, call the family's trainer, register the model.

The trainer itself (``vicap_jobs.training``) never sees the database; this
module is the bridge, used both by ``vicap-jobs train`` (in-process) and by
the worker's train task.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from vicap_jobs.devices import torch_device
from vicap_jobs.errors import InputError, VicapError
from vicap_jobs.models.registry import get_family
from vicap_jobs.services import jobs
from vicap_jobs.services.datasets import get_dataset, load_samples
from vicap_jobs.services.models import ensure_name_free, register_model
from vicap_jobs.settings import get_settings

log = logging.getLogger(__name__)


def train_options(values: dict[str, Any]) -> Any:
    """TrainOptions from plain (JSON) values; unknown keys are an error naming them."""
    from vicap_jobs.training.options import TrainOptions

    known = {f.name for f in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown training option(s): {', '.join(unknown)}")
    clean = {k: v for k, v in values.items() if v is not None}
    if "device" in clean:
        torch_device(str(clean["device"]))  # this machine can train there (imports torch)
    weights = clean.get("backbone_weights")
    if weights not in (None, "pretrained", "random"):
        clean["backbone_weights"] = Path(weights)
    return TrainOptions(**clean)


def create_train_job(*, db: Engine, name: str, family: str, dataset: str, options: dict[str, Any]) -> int:
    """A queued train job, validated now (family, data set, options, free model name)."""
    get_family(family)
    ds = get_dataset(db=db, name=dataset)
    ensure_name_free(db=db, name=name)
    parsed = train_options(options)
    params = {"name": name, "family": family, "dataset": ds.name, "options": _jsonable(dataclasses.asdict(parsed))}
    return jobs.create_job(db=db, kind="train", params=params, dataset_id=ds.id, total=parsed.epochs)


def run_train_job(*, db: Engine, job_id: int, progress_bar: bool = False) -> int | None:
    """Train, keep the best checkpoint, register the model; returns the model id (None if skipped)."""
    job = jobs.get_job(db=db, job_id=job_id)
    if job.status in ("succeeded", "cancelled"):
        return None
    params = job.params
    settings = get_settings()
    options = train_options({**params["options"], "progress_bar": progress_bar})
    jobs.mark_running(db=db, job_id=job_id, device=options.device, total=options.epochs)
    out_dir = settings.models_dir / params["name"]
    try:
        train = load_samples(db=db, dataset=params["dataset"], split="train")
        val = load_samples(db=db, dataset=params["dataset"], split="val")
        if not train:
            raise InputError(f"data set {params['dataset']!r} has no train images on disk")
        _ensure_still_free(db, params["name"], job_id)
        if out_dir.exists():
            shutil.rmtree(out_dir)  # left by an earlier attempt of this job; the name was free when it was submitted
        spec = get_family(params["family"])
        result = spec.train(
            options=options,
            train=train,
            val=val or train[: max(1, len(train) // 10)],
            out_dir=out_dir,
            cache_dir=settings.cache_dir / "features",
            dataset_key=params["dataset"],
            on_progress=lambda p: jobs.set_progress(
                db=db,
                job_id=job_id,
                done=p.epoch,
                total=p.epochs,
                message=f"epoch {p.epoch}/{p.epochs} train loss {p.train_loss:.3f} val loss {p.val_loss:.3f} val BLEU-4 {100 * p.val_bleu4:.1f}",
            ),
        )
        model_id = register_model(
            db=db,
            name=params["name"],
            family=params["family"],
            backbone=options.backbone,
            artifact_dir=str(out_dir),
            hyperparameters=params["options"],
            vocabulary=str(result.codec_file),
            tokenization=options.tokenization,
            image_size=options.image_size,
            dataset_id=job.dataset_id,
            trained_by_job_id=job_id,
        )
    except VicapError as exc:
        jobs.finish_job(db=db, job_id=job_id, status="failed", error=str(exc))
        raise
    except Exception as exc:
        jobs.finish_job(db=db, job_id=job_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    with_model = f"best epoch {result.best_epoch}, val BLEU-4 {100 * result.val_bleu4:.1f}, {result.seconds:.0f}s"
    jobs.set_progress(db=db, job_id=job_id, message=with_model)
    _attach_model(db, job_id, model_id)
    jobs.finish_job(db=db, job_id=job_id, status="succeeded")
    return model_id


def _ensure_still_free(db: Engine, name: str, job_id: int) -> None:
    """Two queued jobs may ask for one name; the first to finish keeps it, the other fails before training."""
    from sqlalchemy import select

    from vicap_jobs.db.session import session_scope
    from vicap_jobs.db.tables import Model

    with session_scope(db) as session:
        owner = session.scalar(select(Model.trained_by_job_id).where(Model.name == name))
        exists = session.scalar(select(Model.id).where(Model.name == name)) is not None
    if exists and owner != job_id:
        raise InputError(
            f"a model named {name!r} was registered after this job was submitted (by job {owner}); resubmit with another name"
        )


def _attach_model(db: Engine, job_id: int, model_id: int) -> None:
    from sqlalchemy import update

    from vicap_jobs.db.session import session_scope
    from vicap_jobs.db.tables import Job

    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == job_id).values(model_id=model_id))


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
