"""Worker processes in the store: heartbeats, who is alive, clean shutdown.

The ``workers`` table is how the CLI knows whether anything will pick up a job
(``submit --wait`` starts a local worker otherwise) and how operators see the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, select

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Worker
from vicap_jobs.settings import get_settings


def record_worker_heartbeat(*, db: Engine, name: str, queues: list[str], device: str | None, pid: int | None) -> None:
    """Insert or refresh the worker's row (last_seen_at = now)."""
    with session_scope(db) as session:
        worker = session.scalar(select(Worker).where(Worker.name == name))
        if worker is None:
            session.add(Worker(name=name, queues=queues, device=device, pid=pid, last_seen_at=utcnow()))
        else:
            worker.queues, worker.device, worker.pid, worker.last_seen_at = queues, device, pid, utcnow()


def live_workers(*, db: Engine, within_s: float | None = None) -> list[str]:
    """Names of workers seen in the last ``within_s`` seconds (default: three heartbeat periods, at least 10 s)."""
    if within_s is None:
        within_s = max(3 * get_settings().heartbeat_s, 10.0)
    cutoff = utcnow() - timedelta(seconds=within_s)
    with session_scope(db) as session:
        return list(session.scalars(select(Worker.name).where(Worker.last_seen_at >= cutoff).order_by(Worker.name)))


def start_worker_hint(gpu: int | None = None) -> str:
    """What to run when no worker is alive."""
    where = f"--gpu {gpu}" if gpu is not None else "--cpu"
    return f"no worker is running; start one with `vicap-jobs worker {where}` (or submit with --wait to run one here)"


def forget_worker(*, db: Engine, name: str) -> None:
    """A worker shutting down cleanly removes its row."""
    with session_scope(db) as session:
        session.execute(delete(Worker).where(Worker.name == name))


@dataclass(frozen=True)
class WorkerRow:
    """A worker's row: its name, queues, device and last heartbeat."""

    name: str
    queues: list[str]
    device: str | None
    pid: int | None
    started_at: datetime
    last_seen_at: datetime
    alive: bool


def list_workers(*, db: Engine, within_s: float | None = None) -> list[WorkerRow]:
    """Every worker row, newest heartbeat first; ``alive`` as in :func:`live_workers`."""
    if within_s is None:
        within_s = max(3 * get_settings().heartbeat_s, 10.0)
    cutoff = utcnow() - timedelta(seconds=within_s)
    with session_scope(db) as session:
        rows = list(session.scalars(select(Worker).order_by(Worker.last_seen_at.desc(), Worker.name)))
        return [
            WorkerRow(
                name=row.name,
                queues=list(row.queues or []),
                device=row.device,
                pid=row.pid,
                started_at=row.started_at,
                last_seen_at=row.last_seen_at,
                alive=_aware(row.last_seen_at) >= cutoff,
            )
            for row in rows
        ]


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; the store always writes UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
