"""Engine-taking shorthands over the session-taking job transitions, for tests that act as one caller.

Each helper opens its own transaction, as a CLI command or a worker would.
"""

from __future__ import annotations

from sqlalchemy import Engine

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Job, JobChunk
from vicap_jobs.jobs import chunks, lifecycle, queries, recovery


def get_job(db: Engine, job_id: int) -> Job:
    with session_scope(db) as session:
        return lifecycle.get_job(session=session, job_id=job_id)


def get_chunk(db: Engine, chunk_id: int) -> JobChunk:
    with session_scope(db) as session:
        chunk = session.get(JobChunk, chunk_id)
        assert chunk is not None
        return chunk


def job_summary(db: Engine, job_id: int) -> queries.JobSummary:
    with session_scope(db) as session:
        return queries.job_summary(session=session, job_id=job_id)


def cancel_job(db: Engine, job_id: int) -> list[str]:
    with session_scope(db) as session:
        return lifecycle.cancel_job(session=session, job_id=job_id)


def retry_job(db: Engine, job_id: int) -> list[int]:
    with session_scope(db) as session:
        return lifecycle.retry_job(session=session, job_id=job_id)


def claim_chunk(db: Engine, chunk_id: int, worker: str) -> JobChunk | None:
    with session_scope(db) as session:
        return chunks.claim_chunk(session=session, chunk_id=chunk_id, worker=worker)


def mark_chunk_enqueued(db: Engine, chunk_id: int, task_id: str) -> None:
    with session_scope(db) as session:
        chunks.mark_chunks_enqueued(session=session, task_ids={chunk_id: task_id})


def requeue_stale_chunks(db: Engine, *, stale_after_s: float = 0.0, max_attempts: int = 5) -> recovery.StaleChunks:
    with session_scope(db) as session:
        return recovery.requeue_stale_chunks(session=session, stale_after_s=stale_after_s, max_attempts=max_attempts)


def finish_if_drained(db: Engine, job_id: int) -> str | None:
    with session_scope(db) as session:
        return chunks.finish_if_drained(session=session, job_id=job_id)
