"""Two models (or two caption jobs) side by side on the same images, sorted by how much they disagree.

Per image: each side's caption, the data set's references when the image has any, each side's
sentence BLEU-4 and ROUGE-L against those references (the COCO definitions of ``metrics/``,
syllable tokens), and the agreement of the two captions (ROUGE-L of one against the other).
Sorting by agreement, lowest first, puts the images where the models differ most on top;
sorting by the score gap puts those where one model is clearly better there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from vicap_jobs.data.text import tokenize
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.status import CaptionStatus, JobStatus
from vicap_jobs.db.tables import Caption, Image, Job, Model
from vicap_jobs.errors import InputError, NotFoundError
from vicap_jobs.metrics.bleu import bleu_from_counts, sentence_counts
from vicap_jobs.metrics.rouge import sentence_rouge_l
from vicap_jobs.services.gallery import references_of
from vicap_jobs.services.models import resolve_model

SORTS = ("disagreement", "gap", "image")
CAPTIONING_KINDS = ("caption", "evaluate")


@dataclass(frozen=True)
class SideScores:
    """Sentence BLEU-4 and ROUGE-L of one caption against the image's references."""

    bleu_4: float
    rouge_l: float


@dataclass(frozen=True)
class ComparedImage:
    image_id: int
    file_name: str
    caption_a: str
    caption_b: str
    references: list[str]
    agreement: float
    """ROUGE-L of caption A against caption B: 1.0 when they are the same words."""
    scores_a: SideScores | None = None
    scores_b: SideScores | None = None

    @property
    def gap(self) -> float:
        """|BLEU-4 of A − BLEU-4 of B| (0 without references)."""
        if self.scores_a is None or self.scores_b is None:
            return 0.0
        return abs(self.scores_a.bleu_4 - self.scores_b.bleu_4)


@dataclass(frozen=True)
class Comparison:
    label_a: str
    label_b: str
    job_a: int
    job_b: int
    n_common: int
    images: list[ComparedImage] = field(default_factory=list)

    @property
    def has_references(self) -> bool:
        return any(image.references for image in self.images)

    def mean(self, side: str, metric: str) -> float | None:
        """Mean sentence ``metric`` ("bleu_4", "rouge_l") of side "a" or "b" over the images shown that have references."""
        values = [
            getattr(scores, metric)
            for image in self.images
            if (scores := image.scores_a if side == "a" else image.scores_b) is not None
        ]
        return sum(values) / len(values) if values else None


def compare_jobs(*, db: Engine, job_a: int, job_b: int, sort: str = "disagreement", limit: int = 100) -> Comparison:
    """Captions of two caption or evaluate jobs on the images both captioned, ``limit`` of them in ``sort`` order."""
    if sort not in SORTS:
        raise InputError(f"sort must be one of {', '.join(SORTS)}; got {sort!r}")
    with session_scope(db) as session:
        label_a, label_b = _job_label(session, job_a), _job_label(session, job_b)
        captions_a, captions_b = _ok_captions(session, job_a), _ok_captions(session, job_b)
        common = sorted(captions_a.keys() & captions_b.keys())
        names = (
            dict(session.execute(select(Image.id, Image.file_name).where(Image.id.in_(common))).all()) if common else {}
        )
        references = references_of(session=session, image_ids=common)
    images = [
        _compare_one(
            image_id, names.get(image_id, ""), captions_a[image_id], captions_b[image_id], references.get(image_id, [])
        )
        for image_id in common
    ]
    if sort == "disagreement":
        images.sort(key=lambda image: (image.agreement, image.image_id))
    elif sort == "gap":
        images.sort(key=lambda image: (-image.gap, image.image_id))
    return Comparison(label_a, label_b, job_a, job_b, n_common=len(common), images=images[: max(1, limit)])


def compare_models(
    *, db: Engine, model_a: str, model_b: str, sort: str = "disagreement", limit: int = 100
) -> Comparison:
    """Two models compared on the newest pair of their finished caption/evaluate jobs that share the most images."""
    first, second = resolve_model(db=db, name=model_a), resolve_model(db=db, name=model_b)
    if first.id == second.id:
        raise InputError("pick two different models to compare")
    with session_scope(db) as session:
        jobs_a, jobs_b = _finished_jobs(session, first.id), _finished_jobs(session, second.id)
        best: tuple[int, int, int] | None = None  # (shared images, job a, job b)
        for a in jobs_a:
            images_a = _ok_image_ids(session, a)
            for b in jobs_b:
                shared = len(images_a & _ok_image_ids(session, b))
                if shared and (best is None or shared > best[0]):
                    best = (shared, a, b)
    if best is None:
        raise NotFoundError(
            f"models {first.name!r} and {second.name!r} have not captioned the same images yet; "
            f"evaluate both on one data set (`vicap-jobs submit evaluate --model NAME --dataset D`)"
        )
    return compare_jobs(db=db, job_a=best[1], job_b=best[2], sort=sort, limit=limit)


def _compare_one(image_id: int, file_name: str, a: str, b: str, references: list[str]) -> ComparedImage:
    tokens_a, tokens_b = tokenize(a), tokenize(b)
    reference_tokens = [tokenize(text) for text in references]
    return ComparedImage(
        image_id=image_id,
        file_name=file_name,
        caption_a=a,
        caption_b=b,
        references=references,
        agreement=sentence_rouge_l(tokens_a, [tokens_b]) if tokens_a and tokens_b else float(tokens_a == tokens_b),
        scores_a=_scores(tokens_a, reference_tokens),
        scores_b=_scores(tokens_b, reference_tokens),
    )


def _scores(candidate: list[str], references: list[list[str]]) -> SideScores | None:
    if not references:
        return None
    bleu_4 = bleu_from_counts(sentence_counts(candidate, references))[3]
    return SideScores(bleu_4=bleu_4, rouge_l=sentence_rouge_l(candidate, references) if candidate else 0.0)


def _job_label(session: Session, job_id: int) -> str:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job with id {job_id}")
    if job.kind not in CAPTIONING_KINDS:
        raise InputError(f"job {job_id} is a {job.kind} job; only caption and evaluate jobs have captions to compare")
    model = session.get(Model, job.model_id) if job.model_id is not None else None
    return f"job {job_id}" + (f" · {model.name}" if model is not None else "")


def _ok_captions(session: Session, job_id: int) -> dict[int, str]:
    return {
        image_id: text or ""
        for image_id, text in session.execute(
            select(Caption.image_id, Caption.text).where(Caption.job_id == job_id, Caption.status == CaptionStatus.OK)
        )
    }


def _ok_image_ids(session: Session, job_id: int) -> set[int]:
    return set(
        session.scalars(select(Caption.image_id).where(Caption.job_id == job_id, Caption.status == CaptionStatus.OK))
    )


def _finished_jobs(session: Session, model_id: int, newest: int = 5) -> list[int]:
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.model_id == model_id, Job.kind.in_(CAPTIONING_KINDS), Job.status == JobStatus.SUCCEEDED)
            .order_by(Job.id.desc())
            .limit(newest)
        )
    )
