"""Training as a job: validate at submit time, then read the data set, call the family's trainer, register the model
(and publish its files when ``VICAP_ARTIFACTS_URL`` is set).

The trainer itself (``vicap_jobs.training``) never sees the database; this module is the bridge.
``vicap-jobs train`` runs the job in this process, ``submit train`` on a worker: both through the
run skeleton (``vicap_jobs.services.runs``).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Model
from vicap_jobs.devices import parse_device, torch_device
from vicap_jobs.errors import InputError
from vicap_jobs.jobs.context import RunContext
from vicap_jobs.jobs.lifecycle import attach_model, create_job
from vicap_jobs.jobs.params import TrainParams
from vicap_jobs.models.manifest import read_manifest
from vicap_jobs.models.registry import get_family
from vicap_jobs.services.artifacts import publish_artifacts
from vicap_jobs.services.datasets import get_dataset, load_samples
from vicap_jobs.services.models import ensure_name_free, register_model
from vicap_jobs.services.runs import JobOutcome, raise_unless_succeeded, run_job
from vicap_jobs.settings import get_settings
from vicap_jobs.training.options import TrainOptions, TrainProgress

log = logging.getLogger(__name__)

# Early-stopping patience of the vision-language families unless given: the study's 2 epochs (a
# fine-tuned pretrained model overfits a small set within a few epochs; CNN+LSTM keeps its tuned 3).
PRETRAINED_PATIENCE = 2


def train_options(values: dict[str, Any], *, check_device: bool = True) -> TrainOptions:
    """TrainOptions from plain (JSON) values; unknown keys are an error naming them.

    check_device: also check this machine can train on the device (imports torch); a job
    being queued only checks the device's spelling, the worker that runs it checks the rest.
    """
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown training option(s): {', '.join(unknown)}")
    clean = {k: v for k, v in values.items() if v is not None}
    if "device" in clean:
        if check_device:
            torch_device(str(clean["device"]))  # this machine can train there (imports torch)
        else:
            parse_device(str(clean["device"]))
    weights = clean.get("backbone_weights")
    if weights not in (None, "pretrained", "random"):
        clean["backbone_weights"] = Path(weights)
    return TrainOptions(**clean)


def create_train_job(
    *, db: Engine, name: str, family: str, dataset: str, options: dict[str, Any], gpu: int | None = None
) -> int:
    """A queued train job, validated now (family, data set, options, free model name)."""
    spec = get_family(family)
    ds = get_dataset(db=db, name=dataset)
    ensure_name_free(db=db, name=name)
    if spec.pretrained:
        options = {"patience": PRETRAINED_PATIENCE, **options}
    parsed = train_options(options, check_device=False)
    if spec.pretrained:
        # Imports torch: only a vision-language train job checks its folders and family options now.
        from vicap_jobs.training.pretrained import check_pretrained_options

        check_pretrained_options(family, parsed)
    params = TrainParams(name=name, family=family, dataset=ds.name, options=_jsonable(dataclasses.asdict(parsed)))
    with session_scope(db) as session:
        return create_job(session=session, kind="train", params=params, dataset_id=ds.id, total=parsed.epochs, gpu=gpu)


def run_training(ctx: RunContext) -> str:
    """The train kind's run function: train, keep the best checkpoint, register the model; returns the summary."""
    params = ctx.params
    assert isinstance(params, TrainParams)
    settings = get_settings()
    options = train_options({**params.options, "progress_bar": ctx.progress_bar})
    ctx.report(total=options.epochs, device=options.device)
    train = load_samples(db=ctx.db, dataset=params.dataset, split="train")
    val = load_samples(db=ctx.db, dataset=params.dataset, split="val")
    if not train:
        raise InputError(f"data set {params.dataset!r} has no train images on disk")
    _ensure_still_free(ctx.db, params.name, ctx.job_id)
    out_dir = settings.models_dir / params.name
    if out_dir.exists():
        shutil.rmtree(out_dir)  # left by an earlier attempt of this job; the name was free when it was submitted
    result = get_family(params.family).train(
        options=options,
        train=train,
        val=val or train[: max(1, len(train) // 10)],
        out_dir=out_dir,
        cache_dir=settings.cache_dir / "features",
        dataset_key=params.dataset,
        on_progress=lambda p: ctx.report(
            done=p.epoch, total=options.epochs + options.scst_epochs, message=progress_line(p)
        ),
    )
    spec = get_family(params.family)
    manifest = read_manifest(out_dir)
    model_id = register_model(
        db=ctx.db,
        name=params.name,
        family=params.family,
        backbone=_built_from(spec.inputs, options) if spec.pretrained else options.backbone,
        artifact_dir=str(out_dir),
        hyperparameters=_recorded(params.options) if spec.pretrained else params.options,
        vocabulary=str(result.codec_file),
        tokenization=str(manifest.get("tokenization") or options.tokenization),
        image_size=int(manifest.get("image_size") or options.image_size),
        dataset_id=ctx.job.dataset_id,
        trained_by_job_id=ctx.job_id,
    )
    with session_scope(ctx.db) as session:
        attach_model(session=session, job_id=ctx.job_id, model_id=model_id)
    # With VICAP_ARTIFACTS_URL set, workers on other hosts download it from there; storage that stays
    # down fails this job (the row stays local-only: it never names a version without its manifest).
    publish_artifacts(db=ctx.db, model_id=model_id)
    return (
        f"best epoch {result.best_epoch}, val BLEU-4 {100 * result.val_bleu4:.1f} "
        f"ROUGE-L {100 * result.val_rouge_l:.1f}, {result.seconds:.0f}s"
    )


def train_in_process(*, db: Engine, job_id: int) -> JobOutcome:
    """Run a queued train job here (``vicap-jobs train``), with a progress bar; a failure is one error line."""
    return raise_unless_succeeded(run_job(db=db, job_id=job_id, in_process=True))


def progress_line(p: TrainProgress) -> str:
    """A job's progress message after an epoch: losses and validation scores, and the rewards in self-critical epochs."""
    line = (
        f"epoch {p.epoch}/{p.epochs} train loss {p.train_loss:.3f} val loss {p.val_loss:.3f} "
        f"val BLEU-4 {100 * p.val_bleu4:.1f} ROUGE-L {100 * p.val_rouge_l:.1f}"
    )
    if p.phase == "scst":
        line += f" · SCST reward {p.mean_reward or 0:.3f} (greedy {p.greedy_reward or 0:.3f})"
        if p.val_cider_d is not None:
            line += f" val CIDEr-D {p.val_cider_d:.3f}"
    return line


def _ensure_still_free(db: Engine, name: str, job_id: int) -> None:
    """Two queued jobs may ask for one name; the first to finish keeps it, the other fails before training."""
    with session_scope(db) as session:
        row = session.execute(select(Model.id, Model.trained_by_job_id).where(Model.name == name)).first()
    if row is not None and row.trained_by_job_id != job_id:
        raise InputError(
            f"a model named {name!r} was registered after this job was submitted (by job {row.trained_by_job_id}); "
            "resubmit with another name"
        )


# TrainOptions fields only the CNN+LSTM trainer reads: not recorded for a vision-language model.
BACKBONE_ONLY_OPTIONS = frozenset(
    {"backbone", "backbone_weights", "finetune_backbone", "image_size", "embed_dim", "hidden_dim",
     "attention_dim", "dropout", "min_freq", "tokenization", "progress_bar"}
)  # fmt: skip


def _recorded(options: dict[str, Any]) -> dict[str, Any]:
    """A vision-language model's options as the models row records them (what its trainer read)."""
    return {key: value for key, value in options.items() if key not in BACKBONE_ONLY_OPTIONS}


def _built_from(inputs: Iterable[str], options: TrainOptions) -> str:
    """The pretrained folders' names ("clip-vit-base-patch32 + gpt2-vietnamese"): the models row's backbone."""
    return " + ".join(Path(str(getattr(options, name))).name for name in inputs if getattr(options, name))


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
