"""Caption rows: one per (job, image), never duplicated, the job's counters moved in the same transaction.

A redelivered chunk that races with its first delivery inserts nothing twice (``captions`` is
unique on job_id, image_id) and counts only what it inserted, so ``jobs.done`` / ``jobs.failed``
always equal the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from vicap_jobs.db.status import CaptionStatus
from vicap_jobs.db.tables import Caption, Job


class CaptionResult(NamedTuple):
    """The outcome for one image: text, or None with the reason."""

    image_id: int
    text: str | None
    latency_ms: float | None
    error: str | None


def write_results(
    *, session: Session, job_id: int, model_id: int | None, engine_name: str, results: Sequence[CaptionResult]
) -> tuple[int, int]:
    """Insert the rows that do not exist yet and bump the job's counters by what was inserted.

    Returns (ok rows inserted, error rows inserted). A result is ok only with text and no error.
    """
    n_ok = n_failed = 0
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    for result in results:
        ok = result.text is not None and result.error is None
        statement = (
            dialect.insert(Caption)
            .values(
                job_id=job_id,
                image_id=result.image_id,
                model_id=model_id,
                text=result.text if ok else None,
                engine=engine_name,
                latency_ms=result.latency_ms if ok else None,
                status=CaptionStatus.OK if ok else CaptionStatus.ERROR,
                error=None if ok else (result.error or "no caption produced"),
            )
            .on_conflict_do_nothing(index_elements=["job_id", "image_id"])
            .returning(Caption.id)  # rowcount is -1 for this statement on PostgreSQL
        )
        if session.execute(statement).scalar_one_or_none() is not None:
            n_ok += ok
            n_failed += not ok
    if n_ok or n_failed:
        session.execute(
            update(Job).where(Job.id == job_id).values(done=Job.done + n_ok + n_failed, failed=Job.failed + n_failed)
        )
    return n_ok, n_failed
