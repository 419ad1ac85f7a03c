"""Job and chunk lifecycle in the store: create, claim, count, finish, cancel, retry, reap.

Counters are updated with single ``UPDATE ... SET done = done + n`` statements so
concurrent workers never lose an increment. Nothing here knows about Celery:
callers get ids (and broker task ids to revoke) back and act on them.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import JOB_KINDS, Caption, Job, JobChunk
from vicap_jobs.errors import InputError, NotFoundError

FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class JobSummary:
    """What ``jobs list`` / ``jobs show`` print."""

    id: int
    kind: str
    status: str
    total: int
    done: int
    failed: int
    progress_message: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict[str, Any]
    worker_host: str | None = None
    device: str | None = None
    chunks: dict[str, int] = field(default_factory=dict)
    errors_by_reason: list[tuple[str, int]] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return max((_aware(end) - _aware(self.started_at)).total_seconds(), 1e-9)

    @property
    def throughput(self) -> float | None:
        """Units (images) per second since the job started."""
        seconds = self.seconds
        return None if seconds is None or not self.done else self.done / seconds


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; the store always writes UTC."""
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def create_job(
    *,
    db: Engine,
    kind: str,
    params: dict[str, Any],
    model_id: int | None = None,
    dataset_id: int | None = None,
    total: int = 0,
) -> int:
    """A queued job row; returns its id."""
    if kind not in JOB_KINDS:
        raise InputError(f"unknown job kind {kind!r}")
    with session_scope(db) as session:
        job = Job(kind=kind, status="queued", params=params, model_id=model_id, dataset_id=dataset_id, total=total)
        session.add(job)
        session.flush()
        return job.id


def get_job(*, db: Engine, job_id: int) -> Job:
    with session_scope(db) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job with id {job_id}")
        session.expunge(job)
        return job


def set_broker_task_id(*, db: Engine, task_id: str, job_id: int | None = None, chunk_id: int | None = None) -> None:
    with session_scope(db) as session:
        if job_id is not None:
            session.execute(update(Job).where(Job.id == job_id).values(broker_task_id=task_id))
        if chunk_id is not None:
            session.execute(update(JobChunk).where(JobChunk.id == chunk_id).values(broker_task_id=task_id))


def mark_running(*, db: Engine, job_id: int, device: str | None = None, total: int | None = None) -> None:
    """Queued → running (idempotent); records host, device and start time once."""
    values: dict[str, Any] = {"status": "running", "worker_host": socket.gethostname(), "heartbeat_at": utcnow()}
    if device is not None:
        values["device"] = device
    if total is not None:
        values["total"] = total
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(started_at=utcnow()))
        session.execute(update(Job).where(Job.id == job_id, Job.status.in_(("queued", "running"))).values(**values))


def set_progress(
    *, db: Engine, job_id: int, done: int | None = None, total: int | None = None, message: str | None = None
) -> None:
    values: dict[str, Any] = {}
    if done is not None:
        values["done"] = done
    if total is not None:
        values["total"] = total
    if message is not None:
        values["progress_message"] = message
    if values:
        with session_scope(db) as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values))


def finish_job(*, db: Engine, job_id: int, status: str, error: str | None = None) -> None:
    """Running/queued → succeeded | failed | cancelled; a finished job is left alone."""
    if status not in FINISHED:
        raise ValueError(status)
    with session_scope(db) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(("queued", "running")))
            .values(status=status, error=error, finished_at=utcnow())
        )


def add_counts(*, db: Engine, job_id: int, done: int, failed: int) -> None:
    """Atomic counter increments (safe with concurrent workers)."""
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == job_id).values(done=Job.done + done, failed=Job.failed + failed))


def create_chunks(*, db: Engine, job_id: int, image_ids: list[int], chunk_size: int, start_seq: int = 0) -> list[int]:
    """Split ``image_ids`` into queued chunks of ``chunk_size``; returns chunk ids in order."""
    if chunk_size <= 0:
        raise InputError("--chunk-size must be positive")
    ids: list[int] = []
    with session_scope(db) as session:
        for offset in range(0, len(image_ids), chunk_size):
            part = image_ids[offset : offset + chunk_size]
            chunk = JobChunk(
                job_id=job_id, seq=start_seq + offset // chunk_size, status="queued", image_ids=part, n_images=len(part)
            )
            session.add(chunk)
            session.flush()
            ids.append(chunk.id)
    return ids


def pending_chunk_ids(*, db: Engine, job_id: int) -> list[int]:
    """Chunks of the job not yet finished (queued or running)."""
    with session_scope(db) as session:
        rows = session.scalars(
            select(JobChunk.id)
            .where(JobChunk.job_id == job_id, JobChunk.status.in_(("queued", "running")))
            .order_by(JobChunk.seq)
        )
        return list(rows)


def list_jobs(*, db: Engine, limit: int = 20, status: str | None = None) -> list[JobSummary]:
    with session_scope(db) as session:
        query = select(Job).order_by(Job.id.desc()).limit(limit)
        if status:
            query = query.where(Job.status == status)
        return [summarize(job) for job in session.scalars(query)]


def job_summary(*, db: Engine, job_id: int) -> JobSummary:
    """Progress, chunk states and errors grouped by reason for one job."""
    with session_scope(db) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job with id {job_id}")
        chunk_states = dict(
            session.execute(
                select(JobChunk.status, func.count()).where(JobChunk.job_id == job_id).group_by(JobChunk.status)
            ).all()
        )
        reasons = Counter(
            _reason(text)
            for text in session.scalars(
                select(Caption.error).where(Caption.job_id == job_id, Caption.status == "error")
            )
        )
        return summarize(job, chunks=chunk_states, errors=reasons.most_common(10))


def _reason(error: str | None) -> str:
    return (error or "unknown error").split(":", 1)[0].strip()


def summarize(
    job: Job, chunks: dict[str, int] | None = None, errors: list[tuple[str, int]] | None = None
) -> JobSummary:
    """A plain summary of a job row (chunk states and error reasons when given)."""
    return JobSummary(
        id=job.id,
        kind=job.kind,
        status=job.status,
        total=job.total,
        done=job.done,
        failed=job.failed,
        progress_message=job.progress_message,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        params=dict(job.params or {}),
        worker_host=job.worker_host,
        device=job.device,
        chunks=chunks or {},
        errors_by_reason=errors or [],
    )


def cancel_job(*, db: Engine, job_id: int) -> list[str]:
    """Mark the job and its unfinished chunks cancelled; returns broker task ids to revoke.

    A chunk already running stops at its next batch boundary (the runner checks).
    """
    with session_scope(db) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job with id {job_id}")
        if job.status in FINISHED:
            raise InputError(f"job {job_id} already {job.status}")
        task_ids = [
            t
            for t in session.scalars(
                select(JobChunk.broker_task_id).where(
                    JobChunk.job_id == job_id, JobChunk.status.in_(("queued", "running"))
                )
            )
            if t
        ]
        if job.broker_task_id:
            task_ids.append(job.broker_task_id)
        session.execute(
            update(JobChunk)
            .where(JobChunk.job_id == job_id, JobChunk.status.in_(("queued", "running")))
            .values(status="cancelled", finished_at=utcnow())
        )
        session.execute(update(Job).where(Job.id == job_id).values(status="cancelled", finished_at=utcnow()))
        return task_ids


def retry_job(*, db: Engine, job_id: int, chunk_size: int | None = None) -> list[int]:
    """Re-open a finished caption job for its failed or missing images; returns new chunk ids.

    Error rows are deleted so the images get a fresh attempt; ok rows are kept.
    """
    from sqlalchemy import delete

    with session_scope(db) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job with id {job_id}")
        if job.kind != "caption" and job.kind != "evaluate":
            raise InputError(
                f"job {job_id} is a {job.kind} job; resubmit it instead (only caption/evaluate jobs retry per image)"
            )
        if job.status in ("queued", "running"):
            raise InputError(f"job {job_id} is still {job.status}; cancel it first or wait")
        planned = [
            i for chunk in session.scalars(select(JobChunk).where(JobChunk.job_id == job_id)) for i in chunk.image_ids
        ]
        ok = set(session.scalars(select(Caption.image_id).where(Caption.job_id == job_id, Caption.status == "ok")))
        todo = [i for i in dict.fromkeys(planned) if i not in ok]
        if not todo:
            raise InputError(f"job {job_id} has no failed or missing images")
        session.execute(delete(Caption).where(Caption.job_id == job_id, Caption.status == "error"))
        next_seq = (session.scalar(select(func.max(JobChunk.seq)).where(JobChunk.job_id == job_id)) or 0) + 1
        size = chunk_size or int((job.params or {}).get("chunk_size") or 256)
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="queued", done=len(ok), failed=0, error=None, finished_at=None, total=len(ok) + len(todo))
        )
    return create_chunks(db=db, job_id=job_id, image_ids=todo, chunk_size=size, start_seq=next_seq)


def claim_chunk(*, db: Engine, chunk_id: int, worker_name: str) -> JobChunk | None:
    """Queued/running → running for this worker; None when the chunk is finished or cancelled."""
    with session_scope(db) as session:
        now = utcnow()
        result = session.execute(
            update(JobChunk)
            .where(JobChunk.id == chunk_id, JobChunk.status.in_(("queued", "running")))
            .values(
                status="running",
                worker_host=worker_name,
                heartbeat_at=now,
                started_at=now,
                attempts=JobChunk.attempts + 1,
            )
        )
        if result.rowcount == 0:
            return None
        chunk = session.get(JobChunk, chunk_id)
        session.expunge(chunk)
        return chunk


def touch_chunk(*, db: Engine, chunk_id: int) -> None:
    """Chunk heartbeat: the worker holding it is alive."""
    with session_scope(db) as session:
        session.execute(update(JobChunk).where(JobChunk.id == chunk_id).values(heartbeat_at=utcnow()))


def stale_chunk_ids(*, db: Engine, stale_after_s: float) -> list[int]:
    """Running chunks whose worker has been silent for ``stale_after_s`` seconds."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    with session_scope(db) as session:
        return list(
            session.scalars(
                select(JobChunk.id)
                .where(JobChunk.status == "running", JobChunk.heartbeat_at < cutoff)
                .order_by(JobChunk.id)
            )
        )


def requeue_chunks(*, db: Engine, chunk_ids: list[int], max_attempts: int | None = None) -> list[int]:
    """Running (stale) → queued again; returns the ids actually reset.

    A chunk already tried ``max_attempts`` times (its worker died or hit the time
    limit every time, e.g. an image that crashes the decoder) is given up instead:
    its remaining images get error rows, so the job can end and say why.
    """
    if max_attempts is None:
        from vicap_jobs.settings import get_settings

        max_attempts = get_settings().max_chunk_attempts
    reset: list[int] = []
    exhausted: list[int] = []
    with session_scope(db) as session:
        for chunk_id in chunk_ids:
            chunk = session.get(JobChunk, chunk_id)
            if chunk is None or chunk.status != "running":
                continue
            if chunk.attempts >= max_attempts:
                exhausted.append(chunk_id)
                continue
            result = session.execute(
                update(JobChunk)
                .where(JobChunk.id == chunk_id, JobChunk.status == "running")
                .values(status="queued", worker_host=None)
            )
            if result.rowcount:
                reset.append(chunk_id)
    for chunk_id in exhausted:
        give_up_chunk(
            db=db,
            chunk_id=chunk_id,
            reason=f"gave up after {max_attempts} attempts: the worker died or timed out each time",
        )
    return reset


def give_up_chunk(*, db: Engine, chunk_id: int, reason: str) -> None:
    """Fail a chunk for good: error rows for its uncaptioned images, then let the job finish."""
    from vicap_jobs.pipeline.runner import finish_job_if_complete
    from vicap_jobs.pipeline.writer import CaptionResult, write_results

    with session_scope(db) as session:
        chunk = session.get(JobChunk, chunk_id)
        if chunk is None or chunk.status not in ("queued", "running"):
            return
        job = session.get(Job, chunk.job_id)
        done = set(session.scalars(select(Caption.image_id).where(Caption.job_id == chunk.job_id)))
        todo = [i for i in chunk.image_ids if i not in done]
        chunk.status, chunk.error, chunk.finished_at = "failed", reason, utcnow()
        job_id, model_id, engine = job.id, job.model_id, (job.params or {}).get("engine") or "torch"
    write_results(
        db=db,
        job_id=job_id,
        model_id=model_id,
        engine_name=engine,
        results=[CaptionResult(i, None, None, reason) for i in todo],
    )
    finish_job_if_complete(db=db, job_id=job_id)


def touch_job(*, db: Engine, job_id: int) -> None:
    """Job heartbeat: the worker running this train/export/evaluate job is alive."""
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))


def stale_job_ids(*, db: Engine, stale_after_s: float) -> list[int]:
    """Running train/export/evaluate jobs whose worker has been silent for ``stale_after_s`` seconds.

    Caption jobs are recovered chunk by chunk instead.
    """
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    with session_scope(db) as session:
        return list(
            session.scalars(
                select(Job.id)
                .where(
                    Job.status == "running",
                    Job.kind != "caption",
                    func.coalesce(Job.heartbeat_at, Job.started_at) < cutoff,
                )
                .order_by(Job.id)
            )
        )


def requeue_jobs(*, db: Engine, job_ids: list[int], max_attempts: int | None = None) -> list[int]:
    """Running (stale) jobs → queued again; a job whose worker died ``max_attempts`` times fails instead."""
    if max_attempts is None:
        from vicap_jobs.settings import get_settings

        max_attempts = get_settings().max_chunk_attempts
    reset: list[int] = []
    with session_scope(db) as session:
        for job_id in job_ids:
            job = session.get(Job, job_id)
            if job is None or job.status != "running":
                continue
            job.attempts = (job.attempts or 0) + 1
            if job.attempts >= max_attempts:
                job.status, job.finished_at = "failed", utcnow()
                job.error = f"gave up after {job.attempts} attempts: the worker died or timed out each time"
                continue
            job.status, job.heartbeat_at = "queued", utcnow()
            reset.append(job_id)
    return reset
