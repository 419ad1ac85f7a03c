"""Chunk transitions: partition a job's images, claim, heartbeat, close, give up, and end a drained job.

::

    queued ──claim──► running ──close──► done | cancelled
       ▲                 │  └──give up──► failed        (error rows for its uncaptioned images)
       ├──requeue (its worker went silent; vicap_jobs.jobs.recovery)
       └──release (its worker could not reach object storage; given up after max attempts instead)

A chunk is a partition of a caption or evaluate job: one message for a caption job's worker, one
step of an evaluate job. ``heartbeat_at`` is the claiming worker's last sign of life;
``enqueued_at`` is when its message was last published.

Closing a chunk and ending its job are two transactions on purpose: each worker commits its chunk
first and only then counts the open ones, so of two chunks closing at once on PostgreSQL at least
the later one sees both closed and ends the job (one transaction each could both see the other
still open, and the job would hang until the reaper).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import rows_changed
from vicap_jobs.db.status import OPEN_CHUNK, OPEN_JOB, CaptionStatus, ChunkStatus, JobStatus
from vicap_jobs.db.tables import Caption, Job, JobChunk
from vicap_jobs.errors import InputError
from vicap_jobs.jobs.kinds import get_job_kind
from vicap_jobs.jobs.writer import CaptionResult, write_results

OutcomeStatus = Literal["done", "cancelled", "skipped", "failed", "requeued"]


@dataclass(frozen=True)
class ChunkOutcome:
    """What happened to one chunk; timings are seconds."""

    status: OutcomeStatus
    n_ok: int = 0
    n_failed: int = 0
    read_s: float = 0.0
    infer_s: float = 0.0
    write_s: float = 0.0


def partition(image_ids: Sequence[int], chunk_size: int) -> list[list[int]]:
    """Consecutive parts of at most ``chunk_size`` ids: every id in exactly one part, order kept."""
    if chunk_size <= 0:
        raise InputError("--chunk-size must be positive")
    return [list(image_ids[start : start + chunk_size]) for start in range(0, len(image_ids), chunk_size)]


def create_chunks(
    *, session: Session, job_id: int, image_ids: Sequence[int], chunk_size: int, start_seq: int = 0
) -> list[int]:
    """Queued chunks of ``chunk_size`` images for the job, numbered from ``start_seq``; ids in order.

    One multi-row INSERT for all of them (a 100,000-image job has 391 chunks of 256).
    """
    rows = [
        {
            "job_id": job_id,
            "seq": start_seq + offset,
            "status": ChunkStatus.QUEUED,
            "image_ids": part,
            "n_images": len(part),
        }
        for offset, part in enumerate(partition(image_ids, chunk_size))
    ]
    if not rows:
        return []
    statement = insert(JobChunk).returning(JobChunk.id, sort_by_parameter_order=True)
    return list(session.connection().execute(statement, rows).scalars())


def open_chunk_ids(*, session: Session, job_id: int) -> list[int]:
    """Chunks of the job not finished yet (queued or running), in order."""
    return list(
        session.scalars(
            select(JobChunk.id).where(JobChunk.job_id == job_id, JobChunk.status.in_(OPEN_CHUNK)).order_by(JobChunk.seq)
        )
    )


def mark_chunks_enqueued(*, session: Session, task_ids: dict[int, str]) -> None:
    """Their messages were published now, with these broker task ids (chunk id → task id); one executemany."""
    if not task_ids:
        return
    now = utcnow()
    session.execute(
        update(JobChunk),
        [{"id": chunk_id, "broker_task_id": task_id, "enqueued_at": now} for chunk_id, task_id in task_ids.items()],
    )


def claim_chunk(*, session: Session, chunk_id: int, worker: str) -> JobChunk | None:
    """Queued (or running: a redelivery) → running for ``worker``; None when the chunk has ended."""
    now = utcnow()
    changed = rows_changed(
        session,
        update(JobChunk)
        .where(JobChunk.id == chunk_id, JobChunk.status.in_(OPEN_CHUNK))
        .values(
            status=ChunkStatus.RUNNING,
            worker_host=worker,
            heartbeat_at=now,
            started_at=now,
            attempts=JobChunk.attempts + 1,
        ),
    )
    if changed == 0:
        return None
    return session.get(JobChunk, chunk_id, populate_existing=True)


def beat_chunk(*, session: Session, chunk_id: int) -> None:
    """Chunk heartbeat: the worker holding it is alive."""
    session.execute(
        update(JobChunk)
        .where(JobChunk.id == chunk_id, JobChunk.status == ChunkStatus.RUNNING)
        .values(heartbeat_at=utcnow())
    )


def close_chunk(*, session: Session, chunk_id: int, outcome: ChunkOutcome) -> bool:
    """Running → done or cancelled, with its timings; False when it was no longer running."""
    if outcome.status not in ("done", "cancelled"):
        raise ValueError(f"a chunk closes as done or cancelled, not {outcome.status!r}")
    values: dict[str, Any] = {"status": outcome.status, "finished_at": utcnow()}
    if outcome.status == "done":
        values.update(read_s=outcome.read_s, infer_s=outcome.infer_s, write_s=outcome.write_s)
    changed = rows_changed(
        session,
        update(JobChunk).where(JobChunk.id == chunk_id, JobChunk.status == ChunkStatus.RUNNING).values(**values),
    )
    return bool(changed)


def give_up_chunk(*, session: Session, chunk_id: int, reason: str) -> int | None:
    """Fail an open chunk for good: error rows for its uncaptioned images; returns its job id.

    Call :func:`finish_if_drained` for that job afterwards, in a new transaction.
    """
    # Failed only if still open: its worker may have closed it since the caller looked.
    changed = rows_changed(
        session,
        update(JobChunk)
        .where(JobChunk.id == chunk_id, JobChunk.status.in_(OPEN_CHUNK))
        .values(status=ChunkStatus.FAILED, error=reason, finished_at=utcnow()),
    )
    if not changed:
        return None
    chunk = session.get(JobChunk, chunk_id)
    assert chunk is not None
    job = session.get(Job, chunk.job_id)
    assert job is not None  # job_chunks.job_id is a foreign key
    done = captioned_among(session=session, job_id=job.id, image_ids=chunk.image_ids)
    write_results(
        session=session,
        job_id=job.id,
        model_id=job.model_id,
        engine_name=str((job.params or {}).get("engine") or "default"),  # never run: no engine was chosen
        results=[CaptionResult(image_id, None, None, reason) for image_id in chunk.image_ids if image_id not in done],
    )
    return job.id


def release_chunk(
    *, session: Session, chunk_id: int, reason: str, max_attempts: int
) -> Literal["requeued", "failed"] | None:
    """Running → queued again, because its worker could not do it now (object storage unreachable).

    The same rule as a dead worker's chunk (``jobs.recovery.requeue_stale_chunks``): the claim that
    just ended counted as an attempt, so after ``max_attempts`` claims the chunk is given up
    instead, its uncaptioned images getting error rows that say why. Rows it wrote before stay: the
    next claim captions only the rest. Returns what happened, None when the chunk was no longer running.
    """
    chunk = session.get(JobChunk, chunk_id, populate_existing=True)
    if chunk is None or chunk.status != ChunkStatus.RUNNING:
        return None
    if chunk.attempts >= max_attempts:
        failed = give_up_chunk(
            session=session, chunk_id=chunk_id, reason=f"gave up after {chunk.attempts} attempts: {reason}"
        )
        return "failed" if failed is not None else None
    changed = rows_changed(
        session,
        update(JobChunk)
        .where(JobChunk.id == chunk_id, JobChunk.status == ChunkStatus.RUNNING)
        .values(status=ChunkStatus.QUEUED, worker_host=None, heartbeat_at=None, error=reason),
    )
    return "requeued" if changed else None


def captioned_among(*, session: Session, job_id: int, image_ids: Sequence[int]) -> set[int]:
    """The ids among ``image_ids`` (a chunk's) that already have a caption row for the job.

    Bounded by the ids' range as well as listed: with the list alone PostgreSQL planned a scan of
    every caption row of the job, filtered by the list, so each chunk cost more than the one before
    (130 ms → 480 ms a chunk over a 100,000-image job, bench/scale.py); with the range it reads
    only the index entries between the chunk's first and last id.
    """
    if not image_ids:
        return set()
    in_range = Caption.image_id.between(min(image_ids), max(image_ids))
    query = select(Caption.image_id).where(Caption.job_id == job_id, in_range, Caption.image_id.in_(image_ids))
    return set(session.scalars(query))


def finish_if_drained(*, session: Session, job_id: int) -> str | None:
    """End a job whose messages are chunks once none of its chunks is open; returns the new status.

    Succeeded, or failed when every image failed (the message names the most common reason).
    Jobs of unit "job" (evaluate) end in their own run function, after scoring, never here.
    """
    job = session.get(Job, job_id)
    if job is None or job.status not in OPEN_JOB or get_job_kind(job.kind).unit != "chunk":
        return None
    open_chunks = session.scalar(
        select(func.count()).select_from(JobChunk).where(JobChunk.job_id == job_id, JobChunk.status.in_(OPEN_CHUNK))
    )
    if open_chunks:
        return None
    n_ok = session.scalar(
        select(func.count()).select_from(Caption).where(Caption.job_id == job_id, Caption.status == CaptionStatus.OK)
    )
    now = utcnow()
    if n_ok == 0 and job.failed > 0:
        reasons = Counter(
            error_reason(text)
            for text in session.scalars(
                select(Caption.error).where(Caption.job_id == job_id, Caption.status == CaptionStatus.ERROR)
            )
        )
        reason = reasons.most_common(1)[0][0] if reasons else "unknown"
        error = f"all {job.failed} images failed; most common reason: {reason}"
        values: dict[str, Any] = {"status": JobStatus.FAILED, "error": error, "finished_at": now}
    else:
        values = {"status": JobStatus.SUCCEEDED, "finished_at": now}
    changed = rows_changed(session, update(Job).where(Job.id == job_id, Job.status.in_(OPEN_JOB)).values(**values))
    return str(values["status"]) if changed else None


def error_reason(error: str | None) -> str:
    """The part of a caption error before its first colon: what ``jobs show`` groups failures by."""
    return (error or "unknown error").split(":", 1)[0].strip()
