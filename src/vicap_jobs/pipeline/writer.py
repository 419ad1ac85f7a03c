"""Writing caption rows: one per (job, image), never duplicated, counters in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import Engine, update
from sqlalchemy.dialects import postgresql, sqlite

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Job


class CaptionResult(NamedTuple):
    """The outcome for one image: text, or None with the reason."""

    image_id: int
    text: str | None
    latency_ms: float | None
    error: str | None


def write_results(
    *, db: Engine, job_id: int, model_id: int | None, engine_name: str, results: Sequence[CaptionResult]
) -> tuple[int, int]:
    """Insert the rows that do not exist yet and bump the job's counters by what was inserted.

    Returns (ok rows inserted, error rows inserted). A redelivered chunk that
    races with its first delivery inserts nothing twice (unique job_id, image_id).
    """
    n_ok = n_failed = 0
    with session_scope(db) as session:
        dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite  # type: ignore[union-attr]
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
                    status="ok" if ok else "error",
                    error=None if ok else (result.error or "no caption produced"),
                )
                .on_conflict_do_nothing(index_elements=["job_id", "image_id"])
                .returning(Caption.id)  # rowcount is -1 for this statement on PostgreSQL
            )
            inserted = session.execute(statement).scalar_one_or_none() is not None
            if inserted:
                n_ok += ok
                n_failed += not ok
        if n_ok or n_failed:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(done=Job.done + n_ok + n_failed, failed=Job.failed + n_failed)
            )
    return n_ok, n_failed
