"""What a run function of a job kind gets: the store, its job and parameters, and ways to report back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.status import JobStatus
from vicap_jobs.db.tables import Job
from vicap_jobs.jobs.lifecycle import report_progress
from vicap_jobs.jobs.params import JobParams
from vicap_jobs.jobs.queries import job_status


def _no_heartbeat() -> None:
    return None


@dataclass
class RunContext:
    """One run of one job (unit "job" kinds): built by the run skeleton, passed to the kind's ``run``.

    ``engines`` is the worker process's model cache (``vicap_jobs.services.model_engines.EngineCache``),
    None outside a worker; ``heartbeat`` is called between units of work; ``progress_bar`` is True when
    a person watches the run in a terminal (``vicap-jobs train`` in-process).
    """

    db: Engine
    job: Job
    params: JobParams
    device: str = "cpu"
    worker_name: str = "in-process"
    engines: Any = None
    heartbeat: Callable[[], None] = field(default=_no_heartbeat)
    progress_bar: bool = False

    @property
    def job_id(self) -> int:
        return self.job.id

    def report(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        message: str | None = None,
        device: str | None = None,
    ) -> None:
        """Record progress on the job row (its own transaction)."""
        with session_scope(self.db) as session:
            report_progress(session=session, job_id=self.job.id, done=done, total=total, message=message, device=device)

    def cancelled(self) -> bool:
        """True once someone cancelled the job (check between units of work and stop)."""
        with session_scope(self.db) as session:
            return job_status(session=session, job_id=self.job.id) == JobStatus.CANCELLED
