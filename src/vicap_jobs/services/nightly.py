"""The nightly re-evaluation: one evaluate job per registered model × data set split marked for it.

Results land as new ``evaluations`` rows, so quality over time is a SQL query. Each split also gets
a fresh blind-baseline row. The scheduler's nightly task calls :func:`create_nightly_jobs` on a
worker, which then publishes the jobs; nothing here knows about Celery.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, select

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Dataset, Model
from vicap_jobs.services.datasets import get_dataset
from vicap_jobs.services.evaluation import create_evaluate_job, ensure_baseline

log = logging.getLogger(__name__)


def nightly_targets(*, db: Engine) -> list[tuple[str, str, str]]:
    """(model, data set, split) for every registered model × every split marked for nightly re-evaluation."""
    with session_scope(db) as session:
        models = list(session.scalars(select(Model.name).order_by(Model.name)))
        datasets = [(d.name, d.nightly_splits or []) for d in session.scalars(select(Dataset).order_by(Dataset.name))]
    return [(m, d, s) for m in models for d, splits in datasets for s in splits]


def create_nightly_jobs(*, db: Engine) -> list[int]:
    """Tonight's evaluate jobs (queued, not published) and a fresh blind baseline per split; returns job ids.

    One broken model or data set is logged and skipped; the others still run.
    """
    job_ids: list[int] = []
    splits: set[tuple[str, str]] = set()
    for model, dataset, split in nightly_targets(db=db):
        splits.add((dataset, split))
        try:
            job_ids.append(create_evaluate_job(db=db, model=model, dataset=dataset, split=split))
        except Exception as exc:  # noqa: BLE001 - one broken model must not stop the others
            log.warning("nightly: cannot evaluate %s on %s/%s: %s", model, dataset, split, exc)
    for dataset, split in sorted(splits):
        try:
            ensure_baseline(
                db=db,
                dataset_id=get_dataset(db=db, name=dataset).id,
                split=split,
                tokenization="syllable",
                refresh=True,
            )
        except Exception as exc:  # noqa: BLE001 - nor one broken data set
            log.warning("nightly: no blind baseline for %s/%s: %s", dataset, split, exc)
    log.info("nightly: %d evaluate job(s) over %d split(s)", len(job_ids), len(splits))
    return job_ids
