"""Caption rows: one per (job, image), never duplicated, the job's counters moved in the same transaction.

A redelivered chunk that races with its first delivery inserts nothing twice (``captions`` is
unique on job_id, image_id) and counts only what it inserted, so ``jobs.done`` / ``jobs.failed``
always equal the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import update
from sqlalchemy.orm import Session

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.bulk import insert_rows
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
    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING status`` for the whole batch
    (``vicap_jobs.db.bulk``), then one counter update.
    """
    if not results:
        return 0, 0
    now = utcnow()
    rows = [_row(job_id, model_id, engine_name, result, now) for result in results]
    insert, parameters = insert_rows(session, Caption, rows)
    statement = insert.on_conflict_do_nothing(index_elements=["job_id", "image_id"]).returning(
        Caption.status  # only the rows inserted come back; rowcount is -1 here on PostgreSQL
    )
    statuses = list(session.connection().execute(statement, parameters).scalars())
    n_ok = statuses.count(CaptionStatus.OK)
    n_failed = len(statuses) - n_ok
    if statuses:
        session.execute(
            update(Job).where(Job.id == job_id).values(done=Job.done + n_ok + n_failed, failed=Job.failed + n_failed)
        )
    return n_ok, n_failed


def _row(job_id: int, model_id: int | None, engine_name: str, result: CaptionResult, now: datetime) -> dict[str, Any]:
    """The caption row of one result: ok with its text and latency, or error with its reason."""
    ok = result.text is not None and result.error is None
    return {
        "job_id": job_id,
        "image_id": result.image_id,
        "model_id": model_id,
        "text": result.text if ok else None,
        "engine": engine_name,
        "latency_ms": result.latency_ms if ok else None,
        "status": CaptionStatus.OK if ok else CaptionStatus.ERROR,
        "error": None if ok else (result.error or "no caption produced"),
        "created_at": now,
    }
