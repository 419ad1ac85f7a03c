"""``vicap-jobs jobs``: list, show, cancel and retry jobs."""

from __future__ import annotations

import click

from vicap_jobs.cli.common import console, err_console, open_store, print_table
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.status import JobStatus
from vicap_jobs.jobs.lifecycle import cancel_job
from vicap_jobs.jobs.queries import JobSummary, job_summary, list_jobs
from vicap_jobs.services.workers import live_workers, start_worker_hint


@click.group()
def jobs() -> None:
    """Follow and control queued and running jobs.

    Example:

    \b
        vicap-jobs jobs list
        vicap-jobs jobs show 12
        vicap-jobs jobs cancel 12
    """


@jobs.command("list")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="Newest jobs to show.")
@click.option("--status", type=click.Choice([str(status) for status in JobStatus]), default=None)
def list_(limit: int, status: str | None) -> None:
    """List the newest jobs with their progress.

    Example:

    \b
        vicap-jobs jobs list --limit 50
        vicap-jobs jobs list --status running
    """
    _, db = open_store()
    with session_scope(db) as session:
        rows = list_jobs(session=session, limit=limit, status=status)
    print_table(
        "jobs",
        ["id", "kind", "status", "done", "total", "failed", "created", "note"],
        [
            (
                s.id,
                s.kind,
                s.status,
                s.done,
                s.total,
                s.failed,
                s.created_at.strftime("%Y-%m-%d %H:%M"),
                _note(s),
            )
            for s in rows
        ],
    )
    workers = live_workers(db=db)
    console.print(f"live workers: {', '.join(workers) if workers else 'none'}")


@jobs.command()
@click.argument("job_id", type=int)
def show(job_id: int) -> None:
    """Show one job: progress, throughput, chunks, and errors grouped by reason.

    Example:

    \b
        vicap-jobs jobs show 12
    """
    _, db = open_store()
    with session_scope(db) as session:
        s = job_summary(session=session, job_id=job_id)
    rows: list[tuple[str, object]] = [
        ("kind", s.kind),
        ("status", s.status),
        ("progress", f"{s.done}/{s.total}" + (f" ({100 * s.done / s.total:.0f}%)" if s.total else "")),
        ("failed", s.failed),
        ("throughput", f"{s.throughput:.2f}/s" if s.throughput else None),
        ("elapsed", f"{s.seconds:.1f}s" if s.seconds else None),
        ("created", s.created_at.isoformat(timespec="seconds")),
        ("started", s.started_at.isoformat(timespec="seconds") if s.started_at else None),
        ("finished", s.finished_at.isoformat(timespec="seconds") if s.finished_at else None),
        ("worker", s.worker_host),
        ("device", s.device),
        ("queue", s.queue),
        ("parent job", s.parent_id),
        ("message", s.progress_message),
        ("error", s.error),
    ]
    if s.chunks:
        rows.append(("chunks", ", ".join(f"{n} {state}" for state, n in sorted(s.chunks.items()))))
    for key in ("folder", "model", "engine", "dataset", "split", "name", "family"):
        if s.params.get(key) is not None:
            rows.append((key, s.params[key]))
        elif key == "engine" and "engine" in s.params:
            rows.append((key, "the model's default, measured by the worker"))
    print_table(f"job {s.id}", ["field", "value"], [(k, v) for k, v in rows if v is not None])
    if s.children:
        print_table(
            "child jobs",
            ["id", "kind", "status", "done", "total", "failed", "note"],
            [(c.id, c.kind, c.status, c.done, c.total, c.failed, _note(c)) for c in s.children],
        )
    if s.errors_by_reason:
        print_table("errors by reason", ["reason", "images"], s.errors_by_reason)


@jobs.command()
@click.argument("job_id", type=int)
def cancel(job_id: int) -> None:
    """Cancel a job and its child jobs: queued messages are revoked, a running chunk stops at its next batch.

    Example:

    \b
        vicap-jobs jobs cancel 12
    """
    from vicap_jobs.worker.publish import revoke  # imports Celery: only for commands that talk to the broker

    _, db = open_store()
    with session_scope(db) as session:
        task_ids = cancel_job(session=session, job_id=job_id)
    revoke(task_ids)
    console.print(f"job {job_id} cancelled ({len(task_ids)} queued task(s) revoked)")


@jobs.command()
@click.argument("job_id", type=int)
def retry(job_id: int) -> None:
    """Re-run only the failed or missing images of a finished caption job (of a sweep: its failed runs).

    Example:

    \b
        vicap-jobs jobs retry 12
    """
    from vicap_jobs.worker.publish import retry_and_publish  # imports Celery: only for commands that publish

    _, db = open_store()
    unit, ids = retry_and_publish(db=db, job_id=job_id)
    if unit == "run":
        console.print(f"job {job_id} re-queued: {len(ids)} failed run(s): jobs {ids}")
    else:
        console.print(f"job {job_id} re-queued: {len(ids)} chunk(s) of failed or missing images")
    if not live_workers(db=db):
        err_console.print(start_worker_hint())


def _note(summary: JobSummary) -> str:
    """The error, else the progress message, cut to 60 characters."""
    text = summary.error or summary.progress_message or ""
    return text if len(text) <= 60 else text[:57] + "..."
