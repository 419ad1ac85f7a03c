"""Score reports: the latest score of every model × data set × split, beside the blind baseline."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Engine, select, text

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Dataset, Evaluation


@dataclass(frozen=True)
class ScoreRow:
    """One line of ``vicap-jobs scores``; BLEU and ROUGE-L on a 0..1 scale, CIDEr-D on its ×10 scale.

    ``cider_d`` and ``baseline_cider_d`` are None for evaluations stored before CIDEr-D was computed.
    """

    model: str | None
    family: str | None
    dataset: str
    split: str
    tokenization: str
    bleu_1: float
    bleu_2: float
    bleu_3: float
    bleu_4: float
    rouge_l: float
    cider_d: float | None
    n_images: int
    baseline_bleu_4: float | None
    baseline_rouge_l: float | None
    baseline_cider_d: float | None

    @property
    def beats_baseline(self) -> bool | None:
        if self.baseline_bleu_4 is None or self.baseline_rouge_l is None:
            return None
        return self.bleu_4 > self.baseline_bleu_4 and self.rouge_l > self.baseline_rouge_l


LATEST_VS_BASELINE_SQL = """
SELECT s.model_name, s.model_family, s.dataset_name, s.split, s.tokenization,
       s.bleu_1, s.bleu_2, s.bleu_3, s.bleu_4, s.rouge_l, s.cider_d, s.n_images,
       b.bleu_4 AS baseline_bleu_4, b.rouge_l AS baseline_rouge_l, b.cider_d AS baseline_cider_d
FROM latest_scores AS s
LEFT JOIN latest_scores AS b
       ON b.is_baseline AND b.dataset_id = s.dataset_id AND b.split = s.split AND b.tokenization = s.tokenization
WHERE NOT s.is_baseline
ORDER BY s.dataset_name, s.split, s.bleu_4 DESC
"""


def latest_scores(*, db: Engine, dataset: str | None = None, model: str | None = None) -> list[ScoreRow]:
    """Newest evaluation per model × data set × split × tokenization, with its baseline (one data set or model if asked)."""
    with session_scope(db) as session:
        rows = session.execute(text(LATEST_VS_BASELINE_SQL)).all()
    result = [ScoreRow(*row) for row in rows]
    return [r for r in result if (dataset is None or r.dataset == dataset) and (model is None or r.model == model)]


SCORE_FORMATS = ("csv", "json")


def render_scores(rows: list[ScoreRow], fmt: str) -> str:
    """Score rows as a CSV or a JSON list, raw (BLEU and ROUGE-L 0..1, CIDEr-D ×10), with ``beats_baseline``."""
    records = [{**asdict(row), "beats_baseline": row.beats_baseline} for row in rows]
    if fmt == "json":
        return json.dumps(records, indent=2, ensure_ascii=False) + "\n"
    if fmt != "csv":
        raise ValueError(f"unknown scores format {fmt!r}")
    buffer = io.StringIO()
    columns = [*ScoreRow.__dataclass_fields__, "beats_baseline"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def baselines(*, db: Engine) -> list[tuple[str, str, str, float, float, float | None, int]]:
    """(data set, split, tokenization, BLEU-4, ROUGE-L, CIDEr-D or None, n_images) of the newest blind baselines."""
    with session_scope(db) as session:
        return [
            (
                str(row[0]),
                str(row[1]),
                str(row[2]),
                float(row[3]),
                float(row[4]),
                None if row[5] is None else float(row[5]),
                int(row[6]),
            )
            for row in session.execute(
                text(
                    "SELECT dataset_name, split, tokenization, bleu_4, rouge_l, cider_d, n_images FROM latest_scores "
                    "WHERE is_baseline ORDER BY dataset_name, split"
                )
            ).all()
        ]


@dataclass(frozen=True)
class ScorePoint:
    """One evaluation of a model, for the score history chart."""

    dataset: str
    split: str
    tokenization: str
    bleu_4: float
    rouge_l: float
    n_images: int
    created_at: datetime
    job_id: int | None


def score_history(*, db: Engine, model_id: int) -> list[ScorePoint]:
    """Every evaluation of model ``model_id`` (nightly ones included), oldest first."""
    with session_scope(db) as session:
        rows = session.execute(
            select(
                Dataset.name,
                Evaluation.split,
                Evaluation.tokenization,
                Evaluation.bleu_4,
                Evaluation.rouge_l,
                Evaluation.n_images,
                Evaluation.created_at,
                Evaluation.job_id,
            )
            .join(Dataset, Dataset.id == Evaluation.dataset_id)
            .where(Evaluation.model_id == model_id, Evaluation.is_baseline.is_(False))
            .order_by(Evaluation.created_at, Evaluation.id)
        ).all()
    return [ScorePoint(*row) for row in rows]
