"""Recovery rules: which chunks and jobs lost their worker or their message, as plans to publish again.

The broker is not trusted to recover dead workers on its own (Redis redelivers only after its
visibility timeout, hours; the embedded transports never do), so the store decides:

- a *running chunk* whose ``heartbeat_at`` is older than ``stale_after_s`` lost its worker (SIGKILL,
  power, a hang): it goes back to queued, or is given up after ``max_attempts`` claims (its images get
  error rows, e.g. an image that crashes the decoder every time);
- a *running job of unit "job"* (train, export, evaluate) whose ``heartbeat_at`` is that old goes back
  to queued, or fails after ``max_attempts`` deaths;
- a *queued chunk* of a chunk-unit job, or a *queued job* of unit "job" none of whose chunks started,
  published longer than ``stale_after_s`` ago while its broker queue is empty, lost its message (a
  Redis restarted without persistence, a worker killed between receiving and starting it);
- a *chunk-unit job* with chunks, none of them open, that is still open was drained by a worker that
  died between closing its chunk and ending the job: it is ended now.

Each rule is a function of the store that returns ids; publishing them is the worker side's job
(``vicap_jobs.worker.reaper``). Chunks and jobs are idempotent (done work is skipped, caption rows
are unique per job and image), so a rare double delivery costs time only. Run them from many workers
at once safely: every transition re-checks the status it moves from.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import rows_changed
from vicap_jobs.db.status import OPEN_CHUNK, OPEN_JOB, ChunkStatus, JobStatus
from vicap_jobs.db.tables import Job, JobChunk
from vicap_jobs.jobs.chunks import give_up_chunk
from vicap_jobs.jobs.kinds import kinds_with_unit
from vicap_jobs.jobs.queues import SHARED_QUEUE

ChunkKey = tuple[str, str]  # (job kind, queue): chunks published together share a task name and a queue


@dataclass
class Redelivery:
    """Messages to publish again: chunk ids per (kind, queue), and job ids (each job's queue is on its row)."""

    chunks: dict[ChunkKey, list[int]] = field(default_factory=dict)
    jobs: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.jobs or any(self.chunks.values()))


@dataclass(frozen=True)
class StaleChunks:
    """What :func:`requeue_stale_chunks` did."""

    requeued: list[int]
    given_up: list[int]  # failed for good; their jobs may now be drained


def cutoff_for(stale_after_s: float) -> datetime:
    """The moment before which a heartbeat (or a publish) counts as stale."""
    return utcnow() - timedelta(seconds=stale_after_s)


def requeue_stale_chunks(*, session: Session, stale_after_s: float, max_attempts: int) -> StaleChunks:
    """Running chunks whose worker is silent → queued again, or given up after ``max_attempts`` claims."""
    stale = list(
        session.scalars(
            select(JobChunk.id)
            .where(JobChunk.status == ChunkStatus.RUNNING, JobChunk.heartbeat_at < cutoff_for(stale_after_s))
            .order_by(JobChunk.id)
        )
    )
    requeued: list[int] = []
    given_up: list[int] = []
    for chunk_id in stale:
        chunk = session.get(JobChunk, chunk_id)
        if chunk is None or chunk.status != ChunkStatus.RUNNING:
            continue
        if chunk.attempts >= max_attempts:
            reason = f"gave up after {chunk.attempts} attempts: the worker died or timed out each time"
            if give_up_chunk(session=session, chunk_id=chunk_id, reason=reason) is not None:
                given_up.append(chunk_id)
            continue
        changed = rows_changed(
            session,
            update(JobChunk)
            .where(JobChunk.id == chunk_id, JobChunk.status == ChunkStatus.RUNNING)
            .values(status=ChunkStatus.QUEUED, worker_host=None, heartbeat_at=None),
        )
        if changed:
            requeued.append(chunk_id)
    return StaleChunks(requeued=requeued, given_up=given_up)


def redelivery_for_chunks(*, session: Session, chunk_ids: list[int]) -> Redelivery:
    """How requeued chunks get back to a worker: their own message (chunk-unit jobs), or their job's."""
    plan = Redelivery()
    if not chunk_ids:
        return plan
    rows = session.execute(
        select(JobChunk.id, Job.id, Job.kind, Job.queue)
        .join(Job, Job.id == JobChunk.job_id)
        .where(JobChunk.id.in_(chunk_ids))
        .order_by(JobChunk.id)
    ).all()
    chunk_unit = set(kinds_with_unit("chunk"))
    by_key: dict[ChunkKey, list[int]] = defaultdict(list)
    for chunk_id, job_id, kind, queue in rows:
        if kind in chunk_unit:
            by_key[(kind, queue or SHARED_QUEUE)].append(chunk_id)
        elif job_id not in plan.jobs:
            plan.jobs.append(job_id)
    plan.chunks = dict(by_key)
    return plan


def requeue_stale_jobs(
    *, session: Session, stale_after_s: float, max_attempts: int, skip: set[int] | None = None
) -> list[int]:
    """Running jobs of unit "job" whose worker is silent → queued (returned), or failed after ``max_attempts``.

    ``skip``: jobs already being redelivered through their chunks (an evaluate job whose chunk was stale).
    """
    candidates = session.scalars(
        select(Job.id)
        .where(
            Job.status == JobStatus.RUNNING,
            Job.kind.in_(kinds_with_unit("job")),
            func.coalesce(Job.heartbeat_at, Job.started_at) < cutoff_for(stale_after_s),
        )
        .order_by(Job.id)
    ).all()
    requeued: list[int] = []
    for job_id in candidates:
        if skip and job_id in skip:
            continue
        # Counted only while still running: its worker may have ended it since the query above.
        attempts = session.scalar(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(attempts=Job.attempts + 1)
            .returning(Job.attempts)
        )
        if attempts is None:
            continue
        if attempts >= max_attempts:
            error = f"gave up after {attempts} attempts: the worker died or timed out each time"
            session.execute(
                update(Job).where(Job.id == job_id).values(status=JobStatus.FAILED, finished_at=utcnow(), error=error)
            )
            continue
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.QUEUED, heartbeat_at=None))
        requeued.append(job_id)
    return requeued


def waiting_too_long(
    *, session: Session, stale_after_s: float
) -> tuple[dict[ChunkKey, list[int]], dict[str, list[int]]]:
    """Queued messages published more than ``stale_after_s`` ago: chunk ids per (kind, queue), job ids per queue.

    Only candidates: the caller publishes again those whose broker queue is empty (otherwise the
    message is probably just waiting behind others).
    """
    cutoff = cutoff_for(stale_after_s)
    chunk_rows = session.execute(
        select(JobChunk.id, Job.kind, Job.queue)
        .join(Job, Job.id == JobChunk.job_id)
        .where(
            JobChunk.status == ChunkStatus.QUEUED,
            Job.kind.in_(kinds_with_unit("chunk")),
            Job.status.in_(OPEN_JOB),
            func.coalesce(JobChunk.enqueued_at, Job.created_at) < cutoff,
        )
        .order_by(JobChunk.id)
    ).all()
    started = exists().where(and_(JobChunk.job_id == Job.id, JobChunk.status != ChunkStatus.QUEUED))
    job_rows = session.execute(
        select(Job.id, Job.queue)
        .where(
            Job.status == JobStatus.QUEUED,
            Job.kind.in_(kinds_with_unit("job")),
            func.coalesce(Job.enqueued_at, Job.created_at) < cutoff,
            ~started,
        )
        .order_by(Job.id)
    ).all()
    chunks: dict[ChunkKey, list[int]] = defaultdict(list)
    for chunk_id, kind, queue in chunk_rows:
        chunks[(kind, queue or SHARED_QUEUE)].append(chunk_id)
    jobs: dict[str, list[int]] = defaultdict(list)
    for job_id, queue in job_rows:
        jobs[queue or SHARED_QUEUE].append(job_id)
    return dict(chunks), dict(jobs)


def drained_job_ids(*, session: Session) -> list[int]:
    """Open chunk-unit jobs that have chunks, none of them open (end each with ``finish_if_drained``)."""
    has_chunks = exists().where(JobChunk.job_id == Job.id)
    has_open = exists().where(and_(JobChunk.job_id == Job.id, JobChunk.status.in_(OPEN_CHUNK)))
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.kind.in_(kinds_with_unit("chunk")), Job.status.in_(OPEN_JOB), has_chunks, ~has_open)
            .order_by(Job.id)
        )
    )
