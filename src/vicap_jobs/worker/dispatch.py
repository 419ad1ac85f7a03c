"""From job rows to broker messages, and back: enqueue ids, revoke, reap, wait, local fallback worker.

The CLI and the scheduler create job rows through ``services``, then call this
module to put ids on the right queue. Messages are published by task *name*
(``send_task``), so enqueueing never imports the task module (torch, engines).

Recovery without trusting the broker (:func:`reap`):

- a *running* chunk whose heartbeat is older than ``stale_after_s`` (its worker
  was SIGKILLed, lost power, or hangs) is reset to queued and re-enqueued;
- a *queued* caption chunk enqueued more than ``stale_after_s`` ago while its
  broker queue is empty lost its message (a Redis restarted without
  persistence, a worker killed between receiving and starting it): re-enqueued;
- a queued train/export/evaluate job in the same situation is re-enqueued;
- a *running* train/export/evaluate job whose worker stopped beating
  (``jobs.heartbeat_at``) is reset to queued and re-enqueued, and failed
  after ``max_chunk_attempts`` deaths;
- a caption job whose chunks all ended but which is still open (its last
  worker died between the two writes) is finished.

Chunks are idempotent (done chunks and captioned images are skipped, caption
rows are unique per job and image), so a rare double delivery costs time only.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from kombu.exceptions import OperationalError as BrokerError
from kombu.utils.uuid import uuid
from sqlalchemy import Engine, and_, exists, func, select

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Job, JobChunk
from vicap_jobs.errors import VicapError
from vicap_jobs.services import jobs, workers
from vicap_jobs.settings import Settings, get_settings, mask_password
from vicap_jobs.worker.app import (
    SHARED_QUEUE,
    TASK_CAPTION_CHUNK,
    TASK_EVALUATE,
    TASK_EXPORT,
    TASK_TRAIN,
    app,
    gpu_queue,
)

log = logging.getLogger(__name__)

JOB_TASKS = {"train": TASK_TRAIN, "export": TASK_EXPORT, "evaluate": TASK_EVALUATE}
_GPU_DEVICE = re.compile(r"^gpu(\d+)$")
OPEN = ("queued", "running")


class BrokerUnavailable(VicapError):
    """The broker cannot be reached; the job rows exist and a worker's reaper enqueues them later."""


# -- queues -------------------------------------------------------------------------------


def queue_for_gpu(gpu: int | None) -> str:
    """``gpu.N`` for a job pinned to GPU N, else the shared queue."""
    return SHARED_QUEUE if gpu is None else gpu_queue(gpu)


def device_for_gpu(gpu: int | None) -> str | None:
    """What a pinned job records as its requested device (``params.device``): ``gpuN``."""
    return None if gpu is None else f"gpu{gpu}"


def queue_for_params(params: dict | None) -> str:
    """The queue a job's messages go to, from the device it asked for at submit time."""
    match = _GPU_DEVICE.match(str((params or {}).get("device") or ""))
    return gpu_queue(int(match.group(1))) if match else SHARED_QUEUE


# -- enqueue / revoke ---------------------------------------------------------------------


def enqueue_chunks(*, db: Engine, chunk_ids: Iterable[int], queue: str = SHARED_QUEUE) -> list[str]:
    """One ``caption_chunk`` message per chunk id; the broker task id is stored on the chunk first.

    A queued chunk's ``heartbeat_at`` is the time it was last enqueued (used to
    spot lost messages). Raises BrokerUnavailable when the broker is down.
    """
    task_ids: list[str] = []
    try:
        with app.producer_or_acquire() as producer:
            for chunk_id in chunk_ids:
                task_id = uuid()
                jobs.set_broker_task_id(db=db, chunk_id=chunk_id, task_id=task_id)
                jobs.touch_chunk(db=db, chunk_id=chunk_id)
                app.send_task(TASK_CAPTION_CHUNK, args=(chunk_id,), queue=queue, task_id=task_id, producer=producer)
                task_ids.append(task_id)
    except (BrokerError, OSError) as exc:
        raise _broker_down(exc) from None
    return task_ids


def enqueue_job(*, db: Engine, job_id: int, kind: str, queue: str = SHARED_QUEUE) -> str:
    """The message for a train / export / evaluate job; its task id is stored on the job first."""
    task_id = uuid()
    jobs.set_broker_task_id(db=db, job_id=job_id, task_id=task_id)
    try:
        app.send_task(JOB_TASKS[kind], args=(job_id,), queue=queue, task_id=task_id)
    except (BrokerError, OSError) as exc:
        raise _broker_down(exc) from None
    return task_id


def revoke(task_ids: list[str]) -> None:
    """Ask workers to drop these queued messages (best effort: the store's cancelled status is what counts).

    The SQLAlchemy transport has no cross-process broadcast, so nothing is sent there.
    """
    settings = get_settings()
    if not task_ids or settings.effective_broker_url.startswith("sqla+"):
        return
    try:
        app.control.revoke(task_ids)
    except Exception:  # noqa: BLE001 - cancelling in the store already stops the chunks
        log.warning("could not broadcast revoke for %d task(s)", len(task_ids), exc_info=True)


def _broker_down(exc: BaseException) -> BrokerUnavailable:
    url = mask_password(get_settings().effective_broker_url)
    return BrokerUnavailable(
        f"cannot reach the broker at {url} ({exc}); the job is stored and will be enqueued by a worker once the broker is back"
    )


# -- reaping ------------------------------------------------------------------------------


@dataclass
class ReapReport:
    """What one reaper pass did."""

    stale_chunks: list[int] = field(default_factory=list)
    stale_jobs: list[int] = field(default_factory=list)
    lost_chunks: list[int] = field(default_factory=list)
    lost_jobs: list[int] = field(default_factory=list)
    finished_jobs: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.stale_chunks or self.stale_jobs or self.lost_chunks or self.lost_jobs or self.finished_jobs)


def reap(*, db: Engine, settings: Settings | None = None) -> ReapReport:
    """One pass of the recovery rules in the module docstring; safe to run from many workers at once."""
    settings = settings or get_settings()
    report = ReapReport()
    stale = jobs.requeue_chunks(db=db, chunk_ids=jobs.stale_chunk_ids(db=db, stale_after_s=settings.stale_after_s))
    rerun_jobs: set[int] = set()
    if stale:
        report.stale_chunks = stale
        rerun_jobs = _reenqueue(db, stale)
    stale_jobs = [j for j in jobs.stale_job_ids(db=db, stale_after_s=settings.stale_after_s) if j not in rerun_jobs]
    for job_id, kind, params in _job_rows(db, jobs.requeue_jobs(db=db, job_ids=stale_jobs)):
        enqueue_job(db=db, job_id=job_id, kind=kind, queue=queue_for_params(params))
        report.stale_jobs.append(job_id)
    cutoff = utcnow() - timedelta(seconds=settings.stale_after_s)
    lost_chunks, lost_jobs = _waiting_too_long(db, cutoff)
    if lost_chunks or lost_jobs:
        empty = _empty_queues({q for q, _ in lost_chunks} | {q for q, _, _ in lost_jobs})
        report.lost_chunks = [c for q, c in lost_chunks if q in empty]
        if report.lost_chunks:
            _reenqueue(db, report.lost_chunks)
        for queue, job_id, kind in lost_jobs:
            if queue in empty:
                enqueue_job(db=db, job_id=job_id, kind=kind, queue=queue)
                report.lost_jobs.append(job_id)
    report.finished_jobs = _finish_drained_jobs(db)
    if report:
        log.warning(
            "reaper: re-enqueued %d stale and %d lost chunk(s), %d stale and %d lost job(s); finished %d drained job(s)",
            len(report.stale_chunks),
            len(report.lost_chunks),
            len(report.stale_jobs),
            len(report.lost_jobs),
            len(report.finished_jobs),
        )
    return report


def _job_rows(db: Engine, job_ids: list[int]) -> list[tuple[int, str, dict]]:
    if not job_ids:
        return []
    with session_scope(db) as session:
        return [
            tuple(r)
            for r in session.execute(select(Job.id, Job.kind, Job.params).where(Job.id.in_(job_ids)).order_by(Job.id))
        ]  # type: ignore[misc]


def _reenqueue(db: Engine, chunk_ids: list[int]) -> set[int]:
    """Caption chunks go back on their queue; an evaluate job's chunks re-run through its evaluate task."""
    with session_scope(db) as session:
        rows = session.execute(
            select(JobChunk.id, Job.id, Job.kind, Job.params)
            .join(Job, Job.id == JobChunk.job_id)
            .where(JobChunk.id.in_(chunk_ids))
            .order_by(JobChunk.id)
        ).all()
    by_queue: dict[str, list[int]] = defaultdict(list)
    evaluate_jobs: dict[int, str] = {}
    for chunk_id, job_id, kind, params in rows:
        if kind == "caption":
            by_queue[queue_for_params(params)].append(chunk_id)
        elif kind in JOB_TASKS:
            evaluate_jobs[job_id] = queue_for_params(params)
    for queue, ids in by_queue.items():
        enqueue_chunks(db=db, chunk_ids=ids, queue=queue)
    for job_id, queue in evaluate_jobs.items():
        enqueue_job(db=db, job_id=job_id, kind="evaluate", queue=queue)
    return set(evaluate_jobs)


def _waiting_too_long(db: Engine, cutoff) -> tuple[list[tuple[str, int]], list[tuple[str, int, str]]]:  # type: ignore[no-untyped-def]
    """Queued caption chunks enqueued before ``cutoff``; queued non-caption jobs created before it."""
    with session_scope(db) as session:
        chunk_rows = session.execute(
            select(JobChunk.id, Job.params)
            .join(Job, Job.id == JobChunk.job_id)
            .where(
                JobChunk.status == "queued",
                Job.kind == "caption",
                Job.status.in_(OPEN),
                func.coalesce(JobChunk.heartbeat_at, Job.created_at) < cutoff,
            )
            .order_by(JobChunk.id)
        ).all()
        # A job's message is lost if it is still queued and none of its chunks ever started.
        started = exists().where(and_(JobChunk.job_id == Job.id, JobChunk.status != "queued"))
        job_rows = session.execute(
            select(Job.id, Job.kind, Job.params).where(
                Job.status == "queued", Job.kind.in_(tuple(JOB_TASKS)), Job.created_at < cutoff, ~started
            )
        ).all()
    return (
        [(queue_for_params(params), chunk_id) for chunk_id, params in chunk_rows],
        [(queue_for_params(params), job_id, kind) for job_id, kind, params in job_rows],
    )


def _empty_queues(queues: set[str]) -> set[str]:
    """The queues among ``queues`` that hold no waiting message (unknown when the broker is down: none)."""
    empty: set[str] = set()
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
            channel = connection.default_channel
            for queue in queues:
                try:
                    _, size, _ = channel.queue_declare(queue=queue, passive=True)
                except connection.channel_errors:
                    size = 0  # never declared, or deleted when it emptied (Redis)
                    channel = connection.channel()
                if size == 0:
                    empty.add(queue)
    except Exception:  # noqa: BLE001 - no broker, no verdict: try again next pass
        log.info("reaper: broker unreachable, lost-message check skipped", exc_info=True)
        return set()
    return empty


def _finish_drained_jobs(db: Engine) -> list[int]:
    """Open caption jobs with chunks, none of them open: their last worker died before finishing them."""
    from vicap_jobs.pipeline.runner import finish_job_if_complete

    with session_scope(db) as session:
        has_chunks = exists().where(JobChunk.job_id == Job.id)
        has_open = exists().where(and_(JobChunk.job_id == Job.id, JobChunk.status.in_(OPEN)))
        ids = list(
            session.scalars(select(Job.id).where(Job.kind == "caption", Job.status.in_(OPEN), has_chunks, ~has_open))
        )
    return [job_id for job_id in ids if finish_job_if_complete(db=db, job_id=job_id)]


# -- workers ------------------------------------------------------------------------------


def live_workers(*, db: Engine, settings: Settings | None = None) -> list[str]:
    """Workers that recorded a heartbeat within three heartbeat periods."""
    settings = settings or get_settings()
    return workers.live_workers(db=db, within_s=max(3 * settings.heartbeat_s, 10.0))


def start_worker_hint(gpu: int | None = None) -> str:
    """What to run when no worker is alive."""
    where = f"--gpu {gpu}" if gpu is not None else "--cpu"
    return f"no worker is running; start one with `vicap-jobs worker {where}` (or submit with --wait to run one here)"


class LocalWorker:
    """A ``vicap-jobs worker`` subprocess started for one job (``submit ... --wait`` with no worker alive).

    Its log goes to ``$VICAP_HOME/logs/local-worker-<job>.log``; it is stopped
    (warm shutdown, then killed) when the job ends or the caller is interrupted.
    """

    def __init__(self, *, job_id: int, gpu: int | None, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.job_id = job_id
        self.gpu = gpu
        self.name = f"local{os.getpid()}@{socket.gethostname()}"
        self.log_path = self.settings.home / "logs" / f"local-worker-{job_id}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalWorker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        where = ["--gpu", str(self.gpu)] if self.gpu is not None else ["--cpu"]
        command = [sys.executable, "-m", "vicap_jobs.cli.main", "worker", *where, "--name", self.name]
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        return self

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 60.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # warm shutdown: the running chunk finishes
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LocalWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- waiting ------------------------------------------------------------------------------


def wait_for_job(
    *,
    db: Engine,
    job_id: int,
    on_progress: Callable[[jobs.JobSummary], None] | None = None,
    gpu: int | None = None,
    on_local_worker: Callable[[LocalWorker], None] | None = None,
    poll_s: float = 0.5,
    settings: Settings | None = None,
) -> jobs.JobSummary:
    """Poll the job until it ends; returns its final summary (with errors grouped by reason).

    When no worker is alive (now, or later because the last one died) a
    :class:`LocalWorker` is started for the job and stopped when it ends;
    ``on_local_worker`` is told first so the caller can say so.
    """
    settings = settings or get_settings()
    local: LocalWorker | None = None
    check_every = max(settings.heartbeat_s, 2.0)
    next_check = 0.0
    try:
        while True:
            job = jobs.get_job(db=db, job_id=job_id)
            if on_progress is not None:
                on_progress(jobs.summarize(job))
            if job.status in jobs.FINISHED:
                return jobs.job_summary(db=db, job_id=job_id)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + check_every
                if local is not None and local.exit_code() is not None:
                    raise VicapError(
                        f"the local worker exited with code {local.exit_code()} before job {job_id} ended; see {local.log_path}"
                    )
                if local is None and not live_workers(db=db, settings=settings):
                    local = LocalWorker(job_id=job_id, gpu=gpu, settings=settings)
                    if on_local_worker is not None:
                        on_local_worker(local)
                    local.start()
            time.sleep(poll_s)
    finally:
        if local is not None:
            local.stop()
