"""Thin Celery tasks: one per job kind from the job-kind table, plus the reaper and the nightly run.

A task takes an id, calls one library function and handles only retries: a job of unit "job" goes
through the run skeleton (``vicap_jobs.services.runs.run_job``), which records its end itself; a
chunk goes to its kind's run function (``vicap_jobs.pipeline.runner.run_chunk`` for captions). A
store that is briefly unreachable (PostgreSQL restart, SQLite lock storm) is retried with backoff.
Per worker process, created after the fork: see ``vicap_jobs.worker.process``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from sqlalchemy.exc import OperationalError as StoreConnectionError

from vicap_jobs.db.session import session_scope
from vicap_jobs.jobs.kinds import JobKind, job_kinds
from vicap_jobs.jobs.recovery import redelivery_for_chunks
from vicap_jobs.services.nightly import create_nightly_jobs
from vicap_jobs.services.runs import run_job
from vicap_jobs.worker import process
from vicap_jobs.worker.app import TASK_NIGHTLY, TASK_REAP, app
from vicap_jobs.worker.publish import publish_job, publish_redelivery
from vicap_jobs.worker.reaper import reap

log = logging.getLogger(__name__)

#: Retries for a store that is briefly unreachable.
STORE_RETRY: dict[str, Any] = {
    "autoretry_for": (StoreConnectionError,),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "max_retries": 8,
}


def _chunk_time_limit() -> int:
    """Hard limit of one chunk: below the Redis visibility timeout, so a hung chunk dies before it is redelivered."""
    return max(60, int(process.settings().visibility_timeout_s * 0.9))


def _job_task(kind: JobKind) -> Task:
    """The task running one job of ``kind`` (unit "job") through the run skeleton."""

    def run(self: Task, job_id: int) -> dict[str, Any]:
        state = process.state()
        state.heartbeat.set_job(job_id)
        try:
            outcome = run_job(
                db=state.db,
                job_id=job_id,
                device=state.device,
                worker_name=self.request.hostname or process.node().name,
                engines=state.engines,
            )
        finally:
            state.heartbeat.set_job(None)
        log.info("%s job %d: %s%s", kind.name, job_id, outcome.status, f" ({outcome.error})" if outcome.error else "")
        return {"status": outcome.status, "skipped": outcome.skipped}

    run.__doc__ = f"Run one {kind.name} job: {kind.summary}."
    return app.task(name=kind.task, bind=True, **STORE_RETRY)(run)


def _chunk_task(kind: JobKind) -> Task:
    """The task running one chunk of a ``kind`` job (unit "chunk")."""

    def run(self: Task, chunk_id: int) -> dict[str, Any]:
        state = process.state()
        state.heartbeat.set_chunk(chunk_id)
        try:
            outcome = kind.run_function()(
                db=state.db,
                chunk_id=chunk_id,
                engines=state.engines,
                worker_name=self.request.hostname or process.node().name,
                heartbeat=state.heartbeat.beat_chunk,
            )
        finally:
            state.heartbeat.set_chunk(None)
        if outcome.status == "requeued":  # its photos could not be read now (object storage down): publish it again
            with session_scope(state.db) as session:
                plan = redelivery_for_chunks(session=session, chunk_ids=[chunk_id])
            publish_redelivery(db=state.db, plan=plan)
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

    run.__doc__ = f"Caption one chunk of a {kind.name} job: {kind.summary}."
    return app.task(name=kind.task, bind=True, time_limit=_chunk_time_limit(), **STORE_RETRY)(run)


#: One task per job kind (plugins' kinds included), by its task name.
KIND_TASKS: dict[str, Task] = {
    kind.task: (_chunk_task(kind) if kind.unit == "chunk" else _job_task(kind)) for kind in job_kinds()
}


@app.task(name=TASK_REAP, **STORE_RETRY)
def reap_stale_chunks() -> dict[str, list[int]]:
    """Re-publish chunks and jobs whose worker went silent and queued work whose message was lost."""
    report = reap(db=process.state().db)
    return {
        "stale_chunks": report.stale_chunks,
        "lost_chunks": report.lost_chunks,
        "stale_jobs": report.stale_jobs,
        "lost_jobs": report.lost_jobs,
        "finished_jobs": report.finished_jobs,
    }


@app.task(name=TASK_NIGHTLY, **STORE_RETRY)
def nightly_evaluate() -> list[int]:
    """Create and publish an evaluate job per registered model × split marked for nightly re-evaluation."""
    db = process.state().db
    job_ids = create_nightly_jobs(db=db)
    for job_id in job_ids:
        publish_job(db=db, job_id=job_id)
    return job_ids
