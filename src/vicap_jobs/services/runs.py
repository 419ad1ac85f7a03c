"""The run skeleton of every job of unit "job" (train, export, evaluate, ...), written once.

Load the job, skip it if it has ended (a redelivered message), mark it running, call its kind's run
function, then record success with the message the run returned, or failure with a readable
reason: a domain error's own one line, or ``Type: message`` for a bug (logged with its traceback).
Workers and in-process commands (``vicap-jobs train``, ``export onnx``, ``evaluate``) both come
through here, so a job ends the same way wherever it ran.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.status import FINISHED_JOB, JobStatus
from vicap_jobs.errors import VicapError
from vicap_jobs.jobs.context import RunContext
from vicap_jobs.jobs.kinds import get_job_kind
from vicap_jobs.jobs.lifecycle import fail_job, get_job, start_job, succeed_job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOutcome:
    """How a run ended: ``status`` is the job's status afterwards; ``skipped`` when it had already ended."""

    job_id: int
    status: str
    message: str | None = None
    error: str | None = None
    skipped: bool = False
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.status == JobStatus.SUCCEEDED


def run_job(
    *,
    db: Engine,
    job_id: int,
    device: str = "cpu",
    worker_name: str = "in-process",
    engines: Any = None,
    heartbeat: Callable[[], None] | None = None,
    in_process: bool = False,
) -> JobOutcome:
    """Run one job of unit "job" to its end and record how it ended (never raises a job's own error).

    ``in_process``: a person runs it in a terminal (progress bars; a bug's traceback is logged only
    with ``-vv``, the CLI shows its one line). A store that cannot be reached is not the job's fault:
    that error propagates (the worker's task retries it), and the job stays as it was.
    """
    with session_scope(db) as session:
        job = get_job(session=session, job_id=job_id)
        if job.status in FINISHED_JOB:
            return JobOutcome(job_id, job.status, skipped=True)
        kind = get_job_kind(job.kind)
        if kind.unit != "job":
            raise VicapError(f"job {job_id} is a {kind.name} job: its chunks are the messages, not the job")
        try:
            params = kind.parse(job.params)
        except VicapError as exc:
            fail_job(session=session, job_id=job_id, reason=str(exc))
            return JobOutcome(job_id, JobStatus.FAILED, error=str(exc))
        if not start_job(session=session, job_id=job_id, device=device):
            return JobOutcome(job_id, job.status, skipped=True)
    context = RunContext(
        db=db,
        job=job,
        params=params,
        device=device,
        worker_name=worker_name,
        engines=engines,
        progress_bar=in_process,
        **({"heartbeat": heartbeat} if heartbeat is not None else {}),
    )
    try:
        result = kind.run_function()(context)
    except OperationalError:
        raise
    except VicapError as exc:
        log.warning("%s job %d failed: %s", kind.name, job_id, exc)
        return _failed(db, job_id, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug: recorded on the job, traceback in the log
        log.error(
            "%s job %d crashed: %s: %s",
            kind.name,
            job_id,
            type(exc).__name__,
            exc,
            exc_info=not in_process or log.isEnabledFor(logging.DEBUG),
        )
        return _failed(db, job_id, f"{type(exc).__name__}: {exc}")
    message = result if isinstance(result, str) else getattr(result, "message", None)
    with session_scope(db) as session:
        succeed_job(session=session, job_id=job_id, message=message)
        final = get_job(session=session, job_id=job_id)
    return JobOutcome(job_id, final.status, message=message, error=final.error, result=result)


def _failed(db: Engine, job_id: int, reason: str) -> JobOutcome:
    with session_scope(db) as session:
        fail_job(session=session, job_id=job_id, reason=reason)
        final = get_job(session=session, job_id=job_id)
    return JobOutcome(job_id, final.status, error=final.error or reason)


def raise_unless_succeeded(outcome: JobOutcome) -> JobOutcome:
    """For in-process commands: a job that did not succeed becomes one domain error line."""
    if outcome.ok:
        return outcome
    if outcome.status == JobStatus.CANCELLED:
        raise VicapError(f"job {outcome.job_id} was cancelled")
    raise VicapError(outcome.error or f"job {outcome.job_id} {outcome.status}")
