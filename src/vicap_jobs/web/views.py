"""Plain dictionaries of store rows, shared by the JSON API and the templates (one formatting of a job)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from vicap_jobs.db.status import JobStatus
from vicap_jobs.jobs.queries import JobSummary

ENDED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def job_json(summary: JobSummary) -> dict[str, Any]:
    """A job as JSON: its row, progress figures, chunk states, errors by reason, children."""
    throughput = summary.throughput
    remaining = summary.total - summary.done
    eta = remaining / throughput if throughput and remaining > 0 and summary.status == JobStatus.RUNNING else None
    return {
        "id": summary.id,
        "kind": summary.kind,
        "status": summary.status,
        "ended": summary.status in ENDED,
        "total": summary.total,
        "done": summary.done,
        "failed": summary.failed,
        "progress": summary.done / summary.total if summary.total else None,
        "images_per_s": throughput if summary.kind in ("caption", "evaluate") else None,
        "eta_s": eta,
        "message": summary.progress_message,
        "error": summary.error,
        "created_at": iso(summary.created_at),
        "started_at": iso(summary.started_at),
        "finished_at": iso(summary.finished_at),
        "worker": summary.worker_host,
        "device": summary.device,
        "queue": summary.queue,
        "parent_id": summary.parent_id,
        "params": summary.params,
        "chunks": summary.chunks,
        "errors_by_reason": [{"reason": reason, "images": n} for reason, n in summary.errors_by_reason],
        "children": [child.id for child in summary.children],
    }


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def duration(seconds: float | None) -> str:
    """``1h 02m``, ``3m 05s``, ``42s``; "–" for None."""
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"
