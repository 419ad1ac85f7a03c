"""Evaluation: caption a data set split with a model, score it, store it beside the blind baseline.

An evaluate job is a caption job over the split's images (same chunks, same
writer, so its captions are exportable like any other) followed by corpus
BLEU-1..4 / ROUGE-L / CIDEr-D against the split's references.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from vicap_jobs.data.text import check_tokenization
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import SPLITS, Caption, Evaluation, Image, Model
from vicap_jobs.errors import DatasetFormatError, InputError, VicapError
from vicap_jobs.jobs.chunks import create_chunks, open_chunk_ids
from vicap_jobs.jobs.context import RunContext
from vicap_jobs.jobs.kinds import get_job_kind
from vicap_jobs.jobs.lifecycle import create_job, get_job
from vicap_jobs.jobs.params import EvaluateParams
from vicap_jobs.metrics.baseline import choose_blind_baseline, evaluate_constant
from vicap_jobs.metrics.scores import CaptionScores, score_captions
from vicap_jobs.pipeline.runner import EngineProvider, run_chunk
from vicap_jobs.services.datasets import get_dataset, split_references
from vicap_jobs.services.model_engines import EngineCache
from vicap_jobs.services.models import engine_for_job, resolve_model
from vicap_jobs.services.overlap import training_overlap
from vicap_jobs.services.runs import raise_unless_succeeded, run_job
from vicap_jobs.settings import get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationResult:
    """A stored evaluation and the blind baseline it is reported beside."""

    evaluation_id: int
    scores: CaptionScores
    baseline: CaptionScores | None
    baseline_caption: str | None
    job_id: int | None
    training_overlap: int | None = None  # evaluated images that duplicate the model's training images

    @property
    def message(self) -> str:
        """One line for the job row: the scores beside the blind baseline, and the overlap warning if any."""
        line = _summary_line(self)
        return f"{line}; {self.overlap_warning}" if self.overlap_warning else line

    @property
    def overlap_warning(self) -> str | None:
        """The line 'warning: 3 of 24 evaluated images duplicate training images ...', or None (none, or not checked)."""
        if not self.training_overlap:
            return None
        return (
            f"warning: {self.training_overlap} of {self.scores.n_images} evaluated images "
            "duplicate training images (exact or near copies, listed in image_overlaps)"
        )


def _store_scores(
    *,
    db: Engine,
    scores: CaptionScores,
    dataset_id: int,
    split: str,
    model_id: int | None,
    job_id: int | None,
    is_baseline: bool,
    source: str | None,
    training_overlap: int | None = None,
) -> int:
    with session_scope(db) as session:
        row = Evaluation(
            job_id=job_id,
            model_id=model_id,
            dataset_id=dataset_id,
            split=split,
            tokenization=scores.tokenization,
            bleu_1=scores.bleu_1,
            bleu_2=scores.bleu_2,
            bleu_3=scores.bleu_3,
            bleu_4=scores.bleu_4,
            rouge_l=scores.rouge_l,
            cider_d=scores.cider_d,
            n_images=scores.n_images,
            is_baseline=is_baseline,
            source=source,
            training_overlap=training_overlap,
        )
        session.add(row)
        session.flush()
        return row.id


def _scores_of(row: Evaluation) -> CaptionScores:
    return CaptionScores(
        row.bleu_1, row.bleu_2, row.bleu_3, row.bleu_4, row.rouge_l, row.n_images, row.tokenization, row.cider_d
    )


def ensure_baseline(
    *, db: Engine, dataset_id: int, split: str, tokenization: str, job_id: int | None = None, refresh: bool = False
) -> tuple[CaptionScores, str] | None:
    """The blind baseline for a split: one caption chosen on the TRAIN split, scored as a constant prediction.

    Stored once per data set × split × tokenization (``refresh`` adds a new row,
    as the nightly run does). None when the data set has no train split.
    """
    if not refresh:
        with session_scope(db) as session:
            row = session.scalar(
                select(Evaluation)
                .where(
                    Evaluation.dataset_id == dataset_id,
                    Evaluation.split == split,
                    Evaluation.is_baseline,
                    Evaluation.tokenization == tokenization,
                )
                .order_by(Evaluation.created_at.desc(), Evaluation.id.desc())
                .limit(1)
            )
            if row is not None:
                return _scores_of(row), row.source or ""
    train = split_references(db=db, dataset_id=dataset_id, split="train")
    target = split_references(db=db, dataset_id=dataset_id, split=split)
    if not train or not target:
        log.warning(
            "no blind baseline for data set %d %s: it needs a train split and a %s split", dataset_id, split, split
        )
        return None
    tokens = check_tokenization(tokenization)
    choice = choose_blind_baseline(train, tokenization=tokens)
    scores = evaluate_constant(choice.caption, target, tokenization=tokens)
    _store_scores(
        db=db,
        scores=scores,
        dataset_id=dataset_id,
        split=split,
        model_id=None,
        job_id=job_id,
        is_baseline=True,
        source=choice.caption,
    )
    return scores, choice.caption


def create_evaluate_job(
    *,
    db: Engine,
    model: str,
    dataset: str,
    split: str,
    tokenization: str = "syllable",
    engine_name: str | None = None,
    batch_size: int = 16,
    gpu: int | None = None,
    parent_id: int | None = None,
) -> int:
    """A queued evaluate job with its chunks; validated now so a typo fails at submit time, not in the worker."""
    if split not in SPLITS:
        raise InputError(f"--split must be one of {', '.join(SPLITS)}")
    check_tokenization(tokenization)
    model_ref = resolve_model(db=db, name=model)
    ds = get_dataset(db=db, name=dataset)
    engine = engine_for_job(model_ref, engine_name)
    image_ids = _split_image_ids(db, ds.id, split)
    if not image_ids:
        raise InputError(f"data set {dataset!r} has no {split} images on disk to caption")
    params = EvaluateParams.model_validate(
        {
            "model": model_ref.name,
            "dataset": ds.name,
            "split": split,
            "tokenization": tokenization,
            "engine": engine,
            "batch_size": batch_size,
        }
    )
    with session_scope(db) as session:
        job_id = create_job(
            session=session,
            kind="evaluate",
            params=params,
            model_id=model_ref.id,
            dataset_id=ds.id,
            total=len(image_ids),
            gpu=gpu,
            parent_id=parent_id,
        )
        create_chunks(session=session, job_id=job_id, image_ids=image_ids, chunk_size=get_settings().chunk_size)
    return job_id


def run_evaluation(ctx: RunContext) -> EvaluationResult | None:
    """The evaluate kind's run function: caption the split chunk by chunk (done ones are skipped), then score.

    Returns None when a chunk ended the job (its model cannot load) or it was cancelled.
    """
    cache: EngineProvider = ctx.engines or EngineCache(db=ctx.db, threads=get_settings().torch_threads)
    with session_scope(ctx.db) as session:
        chunk_ids = open_chunk_ids(session=session, job_id=ctx.job_id)
    for chunk_id in chunk_ids:
        outcome = run_chunk(
            db=ctx.db, chunk_id=chunk_id, engines=cache, worker_name=ctx.worker_name, heartbeat=ctx.heartbeat
        )
        while outcome.status == "requeued":  # object storage was unreachable: claim it again (max attempts apply)
            outcome = run_chunk(
                db=ctx.db, chunk_id=chunk_id, engines=cache, worker_name=ctx.worker_name, heartbeat=ctx.heartbeat
            )
        if outcome.status in ("failed", "cancelled"):
            return None
    return score_job(db=ctx.db, job_id=ctx.job_id)


def score_job(*, db: Engine, job_id: int) -> EvaluationResult:
    """Score an evaluate job's captions against its split (failed images count as empty captions)."""
    with session_scope(db) as session:
        job = get_job(session=session, job_id=job_id)
    params = get_job_kind(job.kind).parse(job.params)
    assert isinstance(params, EvaluateParams) and job.dataset_id is not None
    references = split_references(db=db, dataset_id=job.dataset_id, split=params.split)
    with session_scope(db) as session:
        captions = {
            image_id: text
            for image_id, text in session.execute(
                select(Caption.image_id, Caption.text).where(Caption.job_id == job_id, Caption.status == "ok")
            ).all()
        }
    planned = _split_image_ids(db, job.dataset_id, params.split)
    predictions = {image_id: captions.get(image_id) or "" for image_id in planned if image_id in references}
    scores = score_captions(predictions, {k: references[k] for k in predictions}, tokenization=params.tokenization)
    overlap = _training_overlap(db, job.model_id, list(predictions))
    evaluation_id = _store_scores(
        db=db,
        scores=scores,
        dataset_id=job.dataset_id,
        split=params.split,
        model_id=job.model_id,
        job_id=job_id,
        is_baseline=False,
        source=None,
        training_overlap=overlap,
    )
    baseline = ensure_baseline(
        db=db, dataset_id=job.dataset_id, split=params.split, tokenization=params.tokenization, job_id=job_id
    )
    result = EvaluationResult(
        evaluation_id, scores, baseline[0] if baseline else None, baseline[1] if baseline else None, job_id, overlap
    )
    if result.overlap_warning:
        log.warning("evaluate job %d (%s %s): %s", job_id, params.dataset, params.split, result.overlap_warning)
    return result


def _training_overlap(db: Engine, model_id: int | None, image_ids: list[int]) -> int | None:
    """Evaluated images that duplicate the train split of the model's training data set; None when none is recorded."""
    if model_id is None:
        return None
    with session_scope(db) as session:
        training_dataset_id = session.scalar(select(Model.dataset_id).where(Model.id == model_id))
    if training_dataset_id is None:
        return None
    return training_overlap(db=db, evaluated_ids=image_ids, training_dataset_id=training_dataset_id)


def evaluate_model(
    *,
    db: Engine,
    model: str,
    dataset: str,
    split: str,
    tokenization: str = "syllable",
    engine_name: str | None = None,
    batch_size: int = 16,
) -> EvaluationResult:
    """Evaluate in this process (the `evaluate` command); the same job rows as a queued evaluation."""
    job_id = create_evaluate_job(
        db=db,
        model=model,
        dataset=dataset,
        split=split,
        tokenization=tokenization,
        engine_name=engine_name,
        batch_size=batch_size,
    )
    outcome = raise_unless_succeeded(run_job(db=db, job_id=job_id, in_process=True))
    if not isinstance(outcome.result, EvaluationResult):
        raise VicapError(f"evaluation job {job_id} did not finish: {outcome.error or outcome.status}")
    return outcome.result


def evaluate_predictions(
    *, db: Engine, path: Path, dataset: str, split: str, tokenization: str = "syllable", allow_missing: bool = False
) -> EvaluationResult:
    """Score an external predictions file (COCO results JSON or CSV) and store it (model_id NULL)."""
    tokens = check_tokenization(tokenization)
    ds = get_dataset(db=db, name=dataset)
    references = split_references(db=db, dataset_id=ds.id, split=split)
    if not references:
        raise InputError(f"data set {dataset!r} has no {split} split")
    by_coco, by_name = _image_keys(db, ds.id, split)
    predictions: dict[int, str] = {}
    for index, (key, caption) in enumerate(read_predictions(path)):
        image_id = by_coco.get(key) if isinstance(key, int) else by_name.get(str(key)) or _by_number(by_coco, key)
        if image_id is None:
            raise DatasetFormatError(f"{path}: entry {index} names image {key!r}, which is not in {dataset!r} {split}")
        predictions[image_id] = caption
    scores = score_captions(predictions, references, tokenization=tokens, allow_missing=allow_missing)
    evaluation_id = _store_scores(
        db=db,
        scores=scores,
        dataset_id=ds.id,
        split=split,
        model_id=None,
        job_id=None,
        is_baseline=False,
        source=str(path),
    )
    baseline = ensure_baseline(db=db, dataset_id=ds.id, split=split, tokenization=tokenization)
    return EvaluationResult(
        evaluation_id, scores, baseline[0] if baseline else None, baseline[1] if baseline else None, None
    )


def read_predictions(path: Path) -> list[tuple[int | str, str]]:
    """(image key, caption) pairs from ``[{"image_id", "caption"}]`` JSON or a CSV with image_id/file_name + caption."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"predictions file not found: {path}")
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            fields = set(reader.fieldnames or [])
            # `captions export --format csv` writes the store's image_id beside coco_id and file_name:
            # the data set's own ids come first, so that file scores the right images.
            key = next((k for k in ("coco_id", "file_name", "image_id") if k in fields), None)
            if key is None or "caption" not in fields:
                raise DatasetFormatError(
                    f"{path}: CSV needs columns image_id (COCO id), coco_id or file_name, and caption"
                )
            return [
                (row[key] if key == "file_name" else _int_or_none(row[key]) or row[key], row["caption"] or "")
                for row in reader
                if row.get("status", "ok") in ("ok", "")
            ]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise DatasetFormatError(f'{path}: expected a COCO results list [{{"image_id": ..., "caption": ...}}]')
    pairs: list[tuple[int | str, str]] = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict) or "image_id" not in entry or "caption" not in entry:
            raise DatasetFormatError(f"{path}: entry {index} needs 'image_id' and 'caption'")
        pairs.append((entry["image_id"], str(entry["caption"])))
    return pairs


def _split_image_ids(db: Engine, dataset_id: int, split: str) -> list[int]:
    with session_scope(db) as session:
        return list(
            session.scalars(
                select(Image.id)
                .where(Image.dataset_id == dataset_id, Image.split == split, Image.sha256.is_not(None))
                .order_by(Image.id)
            )
        )


def _image_keys(db: Engine, dataset_id: int, split: str) -> tuple[dict[int, int], dict[str, int]]:
    with session_scope(db) as session:
        rows = session.execute(
            select(Image.id, Image.coco_id, Image.file_name).where(Image.dataset_id == dataset_id, Image.split == split)
        ).all()
    return {c: i for i, c, _ in rows if c is not None}, {f: i for i, _, f in rows}


def _by_number(by_coco: dict[int, int], key: object) -> int | None:
    """The image whose COCO id is ``key`` written as text ("42"), if any."""
    number = _int_or_none(key)
    return None if number is None else by_coco.get(number)


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _summary_line(result: EvaluationResult) -> str:
    s = result.scores
    text = f"BLEU-4 {100 * s.bleu_4:.1f} ROUGE-L {100 * s.rouge_l:.1f} CIDEr-D {_cider(s)} on {s.n_images} images"
    if result.baseline:
        b = result.baseline
        text += f" (blind baseline {100 * b.bleu_4:.1f} / {100 * b.rouge_l:.1f} / {_cider(b)})"
    return text


def _cider(scores: CaptionScores) -> str:
    """CIDEr-D with 2 decimals (×10 scale, not a percentage), or "-" for scores stored before it existed."""
    return "-" if scores.cider_d is None else f"{scores.cider_d:.2f}"
