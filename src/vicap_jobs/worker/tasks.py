"""Thin Celery tasks: each takes ids, calls one library function, and handles retries, time limits, errors.

Per worker process, created after the fork (``worker_process_init``): the store
engine, the :class:`~vicap_jobs.pipeline.runner.EngineCache` (models are loaded
on first use and kept), and the :class:`~vicap_jobs.worker.heartbeat.Heartbeat`
thread. Nothing here parses CLI options.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from celery.signals import celeryd_after_setup, worker_process_init, worker_process_shutdown, worker_shutdown
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError as StoreConnectionError

from vicap_jobs.errors import VicapError
from vicap_jobs.settings import get_settings
from vicap_jobs.worker.app import (
    SHARED_QUEUE,
    TASK_CAPTION_CHUNK,
    TASK_EVALUATE,
    TASK_EXPORT,
    TASK_NIGHTLY,
    TASK_REAP,
    TASK_TRAIN,
    app,
)

log = logging.getLogger(__name__)

#: Retries for a store that is briefly unreachable (PostgreSQL restart, SQLite lock storm).
STORE_RETRY = {"autoretry_for": (StoreConnectionError,), "retry_backoff": 2, "retry_backoff_max": 60, "max_retries": 8}


@dataclass
class _Node:
    """What the worker's main process learned at start-up; the forked pool children inherit it."""

    name: str = f"celery@{os.uname().nodename}"
    queues: tuple[str, ...] = (SHARED_QUEUE,)


@dataclass
class _Process:
    """Per-process state, created after the fork."""

    db: Engine
    engines: Any
    heartbeat: Any
    device: str


_node = _Node()
_process: _Process | None = None


@celeryd_after_setup.connect
def _remember_node(sender: str, instance: Any, **_: Any) -> None:
    _node.name = sender
    _node.queues = tuple(sorted(instance.app.amqp.queues.consume_from or [SHARED_QUEUE]))


@worker_process_init.connect
def _init_process(**_: Any) -> None:
    """In each pool child: own engine, own model cache, own heartbeat thread."""
    global _process
    # get_engine() keys engines by pid, so this child opens its own; inherited ones are left untouched
    # (closing a PostgreSQL connection inherited from the parent would end the parent's session too).
    _process = None
    state()


@worker_process_shutdown.connect
def _shutdown_process(**_: Any) -> None:
    if _process is not None:
        _process.heartbeat.stop()


@worker_shutdown.connect
def _forget_node(**_: Any) -> None:
    """A worker that stops cleanly removes its row, so `--wait` does not count on it."""
    try:
        from vicap_jobs.db.session import get_engine
        from vicap_jobs.services.workers import forget_worker

        forget_worker(db=get_engine(get_settings().effective_database_url), name=_node.name)
    except Exception:  # noqa: BLE001 - shutting down anyway
        log.debug("could not remove worker row %s", _node.name, exc_info=True)


def state() -> _Process:
    """This process's engine, model cache and heartbeat (created on first use)."""
    global _process
    if _process is None:
        from vicap_jobs.db.store import open_engine
        from vicap_jobs.pipeline.runner import EngineCache
        from vicap_jobs.worker.dispatch import reap
        from vicap_jobs.worker.gpu import process_device
        from vicap_jobs.worker.heartbeat import Heartbeat, reap_interval

        settings = get_settings()
        db = open_engine(settings)
        device = process_device()
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        heartbeat = Heartbeat(
            db=db,
            name=_node.name,
            queues=list(_node.queues),
            device=device,
            pid=os.getpid(),
            interval_s=settings.heartbeat_s,
            reap=lambda: reap(db=db, settings=settings),
            reap_every_s=reap_interval(settings.stale_after_s),
        ).start()
        _process = _Process(
            db=db,
            engines=EngineCache(device=device, threads=settings.torch_threads),
            heartbeat=heartbeat,
            device=device,
        )
        log.info("worker process %d ready on %s, queues %s", os.getpid(), device, ", ".join(_node.queues))
    return _process


def _chunk_time_limit() -> int:
    """Hard limit of one chunk: below the Redis visibility timeout, so a hung chunk dies before it is redelivered."""
    return max(60, int(get_settings().visibility_timeout_s * 0.9))


@app.task(name=TASK_CAPTION_CHUNK, bind=True, time_limit=_chunk_time_limit(), **STORE_RETRY)
def caption_chunk(self: Any, chunk_id: int) -> dict[str, Any]:
    """Caption one chunk (partition) of a caption job; a finished or cancelled chunk is skipped."""
    from vicap_jobs.pipeline.runner import run_chunk

    process = state()
    process.heartbeat.set_chunk(chunk_id)
    try:
        outcome = run_chunk(
            db=process.db,
            chunk_id=chunk_id,
            engines=process.engines,
            worker_name=self.request.hostname or _node.name,
            heartbeat=process.heartbeat.beat_chunk,
        )
    finally:
        process.heartbeat.set_chunk(None)
    log.info(
        "chunk %d %s: %d ok, %d failed; read %.2fs infer %.2fs write %.2fs",
        chunk_id,
        outcome.status,
        outcome.n_ok,
        outcome.n_failed,
        outcome.read_s,
        outcome.infer_s,
        outcome.write_s,
    )
    return {"status": outcome.status, "ok": outcome.n_ok, "failed": outcome.n_failed}


def _run_job(kind: str, job_id: int, run: Any) -> None:
    """Call a ``run_*_job`` function. It records failures on the job row itself, so errors end here, logged.

    Not retried automatically: a failed train or export is resubmitted by a
    person (`jobs retry` re-runs an evaluation's missing images).
    """
    from vicap_jobs.services import jobs

    heartbeat = state().heartbeat
    heartbeat.set_job(job_id)
    try:
        run()
    except VicapError as exc:
        log.warning("%s job %d failed: %s", kind, job_id, exc)
    except Exception as exc:  # noqa: BLE001 - recorded on the job, never retried blindly
        log.exception("%s job %d crashed", kind, job_id)
        try:
            jobs.finish_job(db=state().db, job_id=job_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        except StoreConnectionError:
            log.error("cannot record the failure of %s job %d: the store is unreachable", kind, job_id)
    finally:
        heartbeat.set_job(None)


@app.task(name=TASK_TRAIN)
def train(job_id: int) -> None:
    """Train a model for a queued train job (progress: epoch and loss on the job row)."""
    from vicap_jobs.services.training import run_train_job

    _run_job("train", job_id, lambda: run_train_job(db=state().db, job_id=job_id))


@app.task(name=TASK_EXPORT)
def export(job_id: int) -> None:
    """Export a registered model to ONNX (optionally int8) for a queued export job."""
    from vicap_jobs.services.exporting import run_export_job

    _run_job("export", job_id, lambda: run_export_job(db=state().db, job_id=job_id))


@app.task(name=TASK_EVALUATE)
def evaluate(job_id: int) -> None:
    """Caption a data set split and store its scores (and the blind baseline if missing)."""
    from vicap_jobs.services.evaluation import run_evaluate_job

    process = state()
    _run_job("evaluate", job_id, lambda: run_evaluate_job(db=process.db, job_id=job_id, engines=process.engines))


@app.task(name=TASK_REAP, **STORE_RETRY)
def reap_stale_chunks() -> dict[str, list[int]]:
    """Re-enqueue chunks whose worker went silent and queued work whose message was lost."""
    from vicap_jobs.worker.dispatch import reap

    report = reap(db=state().db)
    return {
        "stale_chunks": report.stale_chunks,
        "lost_chunks": report.lost_chunks,
        "lost_jobs": report.lost_jobs,
        "finished_jobs": report.finished_jobs,
    }


@app.task(name=TASK_NIGHTLY, **STORE_RETRY)
def nightly_evaluate() -> list[int]:
    """Enqueue an evaluate job per registered model × split marked for nightly re-evaluation."""
    from vicap_jobs.scheduler.beat import enqueue_nightly_evaluations

    return enqueue_nightly_evaluations(db=state().db)
