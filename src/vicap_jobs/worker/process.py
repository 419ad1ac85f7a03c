"""Per worker process state, created after the fork: the store engine, the model cache, the heartbeat thread.

Celery forks pool children from the worker's main process; each child opens its own store engine
(``get_engine`` keys engines by pid; closing an inherited PostgreSQL connection would end the
parent's session too), its own :class:`~vicap_jobs.services.model_engines.EngineCache` (models are
loaded on first use and kept) and its own :class:`~vicap_jobs.worker.heartbeat.Heartbeat` thread,
which also runs the reaper.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from celery.signals import celeryd_after_setup, worker_process_init, worker_process_shutdown, worker_shutdown
from sqlalchemy import Engine

from vicap_jobs.db.session import get_engine
from vicap_jobs.db.store import open_engine
from vicap_jobs.jobs.queues import SHARED_QUEUE
from vicap_jobs.services.model_engines import EngineCache
from vicap_jobs.services.workers import forget_worker
from vicap_jobs.settings import Settings, get_settings
from vicap_jobs.worker.gpu import process_device, set_torch_threads
from vicap_jobs.worker.heartbeat import Heartbeat, reap_interval
from vicap_jobs.worker.reaper import reap

log = logging.getLogger(__name__)


@dataclass
class Node:
    """What the worker's main process learned at start-up; the forked pool children inherit it."""

    name: str = f"celery@{os.uname().nodename}"
    queues: tuple[str, ...] = (SHARED_QUEUE,)


@dataclass
class ProcessState:
    """This pool child's store engine, model cache, heartbeat and device."""

    db: Engine
    engines: EngineCache
    heartbeat: Heartbeat
    device: str


_node = Node()
_state: ProcessState | None = None


def node() -> Node:
    """The worker node this process belongs to."""
    return _node


def settings() -> Settings:
    """The process's validated settings."""
    return get_settings()


def state() -> ProcessState:
    """This process's engine, model cache and heartbeat (created on first use)."""
    global _state
    if _state is None:
        current = get_settings()
        db = open_engine(current)
        device = process_device()
        set_torch_threads(current.torch_threads)
        heartbeat = Heartbeat(
            db=db,
            name=_node.name,
            queues=list(_node.queues),
            device=device,
            pid=os.getpid(),
            interval_s=current.heartbeat_s,
            reap=lambda: reap(db=db, settings=current),
            reap_every_s=reap_interval(current.stale_after_s),
        ).start()
        _state = ProcessState(
            db=db,
            engines=EngineCache(db=db, device=device, threads=current.torch_threads),
            heartbeat=heartbeat,
            device=device,
        )
        log.info("worker process %d ready on %s, queues %s", os.getpid(), device, ", ".join(_node.queues))
    return _state


@celeryd_after_setup.connect
def _remember_node(sender: str, instance: Any, **_: Any) -> None:
    _node.name = sender
    _node.queues = tuple(sorted(instance.app.amqp.queues.consume_from or [SHARED_QUEUE]))


@worker_process_init.connect
def _init_process(**_: Any) -> None:
    """In each pool child: own engine, own model cache, own heartbeat thread."""
    global _state
    _state = None
    state()


@worker_process_shutdown.connect
def _shutdown_process(**_: Any) -> None:
    if _state is not None:
        _state.heartbeat.stop()


@worker_shutdown.connect
def _forget_node(**_: Any) -> None:
    """A worker that stops cleanly removes its row, so `--wait` does not count on it."""
    try:
        forget_worker(db=get_engine(get_settings().effective_database_url), name=_node.name)
    except Exception:  # noqa: BLE001 - shutting down anyway
        log.debug("could not remove worker row %s", _node.name, exc_info=True)
