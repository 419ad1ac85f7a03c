"""Job transitions: create, start, heartbeat, progress, succeed, fail, cancel, retry.

::

    queued ──start──► running ──succeed──► succeeded
       │                 │ └────fail─────► failed
       └──────cancel─────┴───────────────► cancelled        (retry: a finished chunked job → queued)

Every function takes the caller's ``session`` and never commits; where two writes must be one
transaction (a retry's deletions and its new chunks) they happen in one function. Finishing
transitions only move open jobs (queued or running), so a job ended by one worker, by a cancel or by
the reaper is never moved again by a late message. Counters move with single
``UPDATE ... SET done = done + n`` statements (``vicap_jobs.jobs.writer``), so concurrent workers
never lose an increment.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import rows_changed
from vicap_jobs.db.status import FINISHED_JOB, OPEN_CHUNK, OPEN_JOB, CaptionStatus, ChunkStatus, JobStatus
from vicap_jobs.db.tables import Caption, Job, JobChunk
from vicap_jobs.errors import InputError, NotFoundError
from vicap_jobs.jobs.chunks import create_chunks
from vicap_jobs.jobs.kinds import get_job_kind
from vicap_jobs.jobs.params import JobParams
from vicap_jobs.jobs.queues import queue_for_gpu


def create_job(
    *,
    session: Session,
    kind: str,
    params: JobParams | Mapping[str, Any],
    model_id: int | None = None,
    dataset_id: int | None = None,
    total: int = 0,
    parent_id: int | None = None,
    gpu: int | None = None,
) -> int:
    """A queued job of a kind from the job-kind table, its params validated; returns its id.

    ``gpu`` pins the job (and its chunks) to the worker of GPU N: the queue is recorded on the row.
    """
    spec = get_job_kind(kind)
    parsed = spec.parse(params)
    if parent_id is not None and session.get(Job, parent_id) is None:
        raise NotFoundError(f"no parent job with id {parent_id}")
    job = Job(
        kind=spec.name,
        status=JobStatus.QUEUED,
        params=parsed.to_json(),
        model_id=model_id,
        dataset_id=dataset_id,
        total=total,
        parent_id=parent_id,
        queue=spec.queue or queue_for_gpu(gpu),
    )
    session.add(job)
    session.flush()
    return job.id


def get_job(*, session: Session, job_id: int) -> Job:
    """The job row (usable after the session closes: sessions do not expire on commit)."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job with id {job_id}")
    return job


def start_job(*, session: Session, job_id: int, worker: str | None = None, device: str | None = None) -> bool:
    """Queued → running (running stays running: a redelivered job); False when the job has finished.

    Records the host, the device and the start of this run (set when it leaves queued: a job requeued
    by the reaper or by ``retry`` starts a new run) and counts as a heartbeat.
    """
    now = utcnow()
    session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(started_at=now))
    values: dict[str, Any] = {
        "status": JobStatus.RUNNING,
        "worker_host": worker or socket.gethostname(),
        "heartbeat_at": now,
    }
    if device is not None:
        values["device"] = device
    changed = rows_changed(session, update(Job).where(Job.id == job_id, Job.status.in_(OPEN_JOB)).values(**values))
    return bool(changed)


def beat_job(*, session: Session, job_id: int) -> None:
    """Job heartbeat: the worker running this job (unit "job") is alive."""
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))


def report_progress(
    *,
    session: Session,
    job_id: int,
    done: int | None = None,
    total: int | None = None,
    message: str | None = None,
    device: str | None = None,
) -> None:
    """Progress of a running job: units done of total, a short message (e.g. the epoch and loss)."""
    values: dict[str, Any] = {}
    for column, value in (("done", done), ("total", total), ("progress_message", message), ("device", device)):
        if value is not None:
            values[column] = value
    if values:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def succeed_job(*, session: Session, job_id: int, message: str | None = None) -> bool:
    """Open → succeeded; False when the job had already ended (failed, cancelled, or done before)."""
    values: dict[str, Any] = {"status": JobStatus.SUCCEEDED, "finished_at": utcnow(), "error": None}
    if message is not None:
        values["progress_message"] = message
    changed = rows_changed(session, update(Job).where(Job.id == job_id, Job.status.in_(OPEN_JOB)).values(**values))
    return bool(changed)


def fail_job(*, session: Session, job_id: int, reason: str) -> bool:
    """Open → failed with ``reason``; its open chunks fail with the same reason. False if it had ended."""
    now = utcnow()
    changed = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status.in_(OPEN_JOB))
        .values(status=JobStatus.FAILED, error=reason, finished_at=now),
    )
    if not changed:
        return False
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.status.in_(OPEN_CHUNK))
        .values(status=ChunkStatus.FAILED, error=reason, finished_at=now)
    )
    return True


def cancel_job(*, session: Session, job_id: int) -> list[str]:
    """Cancel an open job, its open chunks and its open child jobs; returns broker task ids to revoke.

    A chunk a worker is running stops at its next batch boundary (the runner checks the job's status).
    """
    job = get_job(session=session, job_id=job_id)
    if job.status in FINISHED_JOB:
        raise InputError(f"job {job_id} already {job.status}")
    job_ids = [job_id, *_open_descendants(session, job_id)]
    task_ids = [
        task_id
        for task_id in session.scalars(
            select(JobChunk.broker_task_id).where(JobChunk.job_id.in_(job_ids), JobChunk.status.in_(OPEN_CHUNK))
        )
        if task_id
    ]
    task_ids += [
        task_id
        for task_id in session.scalars(select(Job.broker_task_id).where(Job.id.in_(job_ids), Job.status.in_(OPEN_JOB)))
        if task_id
    ]
    now = utcnow()
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id.in_(job_ids), JobChunk.status.in_(OPEN_CHUNK))
        .values(status=ChunkStatus.CANCELLED, finished_at=now)
    )
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status.in_(OPEN_JOB))
        .values(status=JobStatus.CANCELLED, finished_at=now)
    )
    return task_ids


def _open_descendants(session: Session, job_id: int) -> list[int]:
    """Ids of the open jobs below ``job_id`` (children, grandchildren, ...)."""
    found: list[int] = []
    frontier = [job_id]
    while frontier:
        children = list(session.scalars(select(Job.id).where(Job.parent_id.in_(frontier))))
        found += children
        frontier = children
    if not found:
        return []
    return list(session.scalars(select(Job.id).where(Job.id.in_(found), Job.status.in_(OPEN_JOB))))


def retry_job(*, session: Session, job_id: int, chunk_size: int | None = None) -> list[int]:
    """Re-open a finished job of a kind that retries per image; returns the new chunk ids.

    The failed or never-captioned images go into new chunks; their error rows are deleted so they get
    a fresh attempt; ok rows are kept and counted as done. A finished sweep instead re-queues only its
    failed children and returns their job ids (each is a message of its own: publish those jobs).
    """
    job = get_job(session=session, job_id=job_id)
    if job.kind == "sweep":
        return _retry_sweep(session, job)
    if get_job_kind(job.kind).retry != "images":
        raise InputError(
            f"job {job_id} is a {job.kind} job; resubmit it instead (only caption/evaluate jobs retry per image)"
        )
    if job.status in OPEN_JOB:
        raise InputError(f"job {job_id} is still {job.status}; cancel it first or wait")
    planned = [
        i for chunk in session.scalars(select(JobChunk).where(JobChunk.job_id == job_id)) for i in chunk.image_ids
    ]
    ok = set(
        session.scalars(select(Caption.image_id).where(Caption.job_id == job_id, Caption.status == CaptionStatus.OK))
    )
    todo = [i for i in dict.fromkeys(planned) if i not in ok]
    if not todo:
        raise InputError(f"job {job_id} has no failed or missing images")
    next_seq = (session.scalar(select(func.max(JobChunk.seq)).where(JobChunk.job_id == job_id)) or 0) + 1
    size = chunk_size or int((job.params or {}).get("chunk_size") or 256)
    reopened = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == job.status)  # two retries at once: the second finds it queued
        .values(
            status=JobStatus.QUEUED,
            done=len(ok),
            failed=0,
            error=None,
            finished_at=None,
            total=len(ok) + len(todo),
            attempts=0,
        ),
    )
    if not reopened:
        raise InputError(f"job {job_id} changed while it was being retried (retried twice at once?); look again")
    session.execute(delete(Caption).where(Caption.job_id == job_id, Caption.status == CaptionStatus.ERROR))
    return create_chunks(session=session, job_id=job_id, image_ids=todo, chunk_size=size, start_seq=next_seq)


def _retry_sweep(session: Session, job: Job) -> list[int]:
    """Re-open a finished sweep: its failed children go back to queued (returned), the others keep their result."""
    if job.status in OPEN_JOB:
        raise InputError(f"job {job.id} is still {job.status}; cancel it first or wait")
    children = session.execute(select(Job.id, Job.status).where(Job.parent_id == job.id).order_by(Job.id)).all()
    failed = [child_id for child_id, status in children if status == JobStatus.FAILED]
    if not failed:
        raise InputError(f"sweep job {job.id} has no failed runs to retry")
    reopened = rows_changed(
        session,
        update(Job)
        .where(Job.id == job.id, Job.status == job.status)  # two retries at once: the second finds it running
        .values(status=JobStatus.RUNNING, done=len(children) - len(failed), failed=0, error=None, finished_at=None),
    )
    if not reopened:
        raise InputError(f"job {job.id} changed while it was being retried (retried twice at once?); look again")
    session.execute(
        update(Job)
        .where(Job.id.in_(failed), Job.status == JobStatus.FAILED)
        .values(
            status=JobStatus.QUEUED,
            done=0,
            error=None,
            finished_at=None,
            heartbeat_at=None,
            enqueued_at=None,  # the reaper's lost-message rule publishes a queued job never published
            broker_task_id=None,
            attempts=0,
        )
    )
    return failed


def attach_model(*, session: Session, job_id: int, model_id: int) -> None:
    """Record the model a job made (a train job) or uses."""
    session.execute(update(Job).where(Job.id == job_id).values(model_id=model_id))


def mark_job_enqueued(*, session: Session, job_id: int, task_id: str) -> None:
    """Its message was published now with broker task id ``task_id`` (stored first, so it can be revoked)."""
    session.execute(update(Job).where(Job.id == job_id).values(broker_task_id=task_id, enqueued_at=utcnow()))


def child_job_ids(*, session: Session, job_id: int) -> list[int]:
    """Ids of the jobs whose parent is ``job_id``, oldest first."""
    return list(session.scalars(select(Job.id).where(Job.parent_id == job_id).order_by(Job.id)))
