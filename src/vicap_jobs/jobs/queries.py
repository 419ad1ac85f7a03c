"""Read-only views of jobs for ``jobs list`` / ``jobs show``, the wait loop and the web view."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.status import CaptionStatus
from vicap_jobs.db.tables import Caption, Job, JobChunk
from vicap_jobs.errors import NotFoundError
from vicap_jobs.jobs.chunks import error_reason


@dataclass(frozen=True)
class JobSummary:
    """A plain copy of a job row, with chunk states, errors grouped by reason and child jobs when asked."""

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
    queue: str | None = None
    parent_id: int | None = None
    chunks: dict[str, int] = field(default_factory=dict)
    errors_by_reason: list[tuple[str, int]] = field(default_factory=list)
    children: list[JobSummary] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        """Seconds since the job started (until it finished)."""
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return max((_aware(end) - _aware(self.started_at)).total_seconds(), 1e-9)

    @property
    def reused(self) -> int:
        """Images of a caption job that got a copy of an earlier caption instead of a worker's (``--skip-known``)."""
        return int(self.params.get("reused") or 0)

    @property
    def throughput(self) -> float | None:
        """Units (images) per second since the job started."""
        seconds = self.seconds
        return None if seconds is None or not self.done else self.done / seconds


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; the store always writes UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def summarize(
    job: Job,
    *,
    chunks: dict[str, int] | None = None,
    errors: list[tuple[str, int]] | None = None,
    children: list[JobSummary] | None = None,
) -> JobSummary:
    """A plain summary of a job row."""
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
        queue=job.queue,
        parent_id=job.parent_id,
        chunks=chunks or {},
        errors_by_reason=errors or [],
        children=children or [],
    )


def list_jobs(*, session: Session, limit: int = 20, status: str | None = None) -> list[JobSummary]:
    """The newest jobs, optionally of one status."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == status)
    return [summarize(job) for job in session.scalars(query)]


def job_status(*, session: Session, job_id: int) -> str | None:
    """The job's status now (None if it does not exist)."""
    return session.scalar(select(Job.status).where(Job.id == job_id))


def job_summary(*, session: Session, job_id: int) -> JobSummary:
    """Progress, chunk states, errors grouped by reason (ten most common) and child jobs of one job."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job with id {job_id}")
    chunk_states = {
        str(state): int(count)
        for state, count in session.execute(
            select(JobChunk.status, func.count()).where(JobChunk.job_id == job_id).group_by(JobChunk.status)
        ).all()
    }
    reasons = Counter(
        error_reason(text)
        for text in session.scalars(
            select(Caption.error).where(Caption.job_id == job_id, Caption.status == CaptionStatus.ERROR)
        )
    )
    children = [
        summarize(child) for child in session.scalars(select(Job).where(Job.parent_id == job_id).order_by(Job.id))
    ]
    return summarize(job, chunks=chunk_states, errors=reasons.most_common(10), children=children)
