"""The Celery application, configured from settings. Only ``worker/`` and ``scheduler/`` import it.

Reliability choices (see docs/architecture.md):

- ``task_acks_late`` + ``worker_prefetch_multiplier = 1`` + ``task_reject_on_worker_lost``:
  a message is acknowledged only after its task returns, and a worker holds at
  most one message per process, so a crash loses nothing the broker still has.
- Tasks carry ids only and every task is idempotent, so a redelivery is harmless.
- The broker is not trusted to recover dead workers on its own (Redis waits for
  the ``visibility_timeout``; the embedded transports never redeliver): chunks
  are tracked in the store with heartbeats and re-enqueued by live workers
  (``worker.heartbeat``) and by the scheduler (``scheduler.beat``).
- No result backend: job state lives in the SQL store.

Queues (``vicap_jobs.jobs.queues``): ``vicap`` is shared by every worker; ``gpu.N`` is consumed only
by the worker started with ``--gpu N`` (``submit caption --gpu N`` pins a job there). Task names
of job kinds come from the job-kind table (``vicap_jobs.jobs.kinds``); the two housekeeping tasks
are named here.

Embedded broker (no server, the default): kombu's SQLAlchemy transport on a
SQLite file under ``VICAP_HOME`` (``sqla+sqlite:///…``). Its poll interval must
be set on the Transport class: the transport hands every transport option to
``create_engine``, which rejects ``polling_interval``. Measured here with
acks_late and prefetch 1: ~100 ms per task round trip, ~7 tasks/s back to back
(one message per poll), 24 ms per publish (a SQLite commit each) — nothing next
to a chunk of 256 images.

kombu's filesystem transport (``filesystem://``, folders under
``VICAP_HOME/broker``) was measured too (~10 tasks/s, 2.5 ms per publish) but
is NOT safe with a worker consuming while a client publishes: it creates the
message file before writing it, a poller can claim the empty file, and the
worker dies with "Unrecoverable error: JSONDecodeError" (kombu issue #1551).
It stays usable for experiments; the default is the SQLAlchemy transport.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery import Celery
from kombu import Exchange, Queue

from vicap_jobs.jobs.queues import SHARED_QUEUE
from vicap_jobs.settings import Settings, get_settings

log = logging.getLogger(__name__)

EMBEDDED_POLL_INTERVAL_S = 0.1

#: Housekeeping task names: part of the message contract with the scheduler (keep them stable).
TASK_REAP = "vicap.reap_stale_chunks"
TASK_NIGHTLY = "vicap.nightly_evaluate"


def local_timezone_name() -> str:
    """IANA name of this machine's time zone (``TZ``, else ``/etc/localtime``), falling back to UTC.

    The nightly cron is local time, so the app runs in the local zone.
    """
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = str(Path("/etc/localtime").resolve())
        candidates.append(target.split("/zoneinfo/", 1)[1] if "/zoneinfo/" in target else "")
    except OSError:
        pass
    for name in candidates:
        if not name:
            continue
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
        return name
    return "UTC"


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Per-transport options (never ``polling_interval``: see the module docstring)."""
    url = settings.effective_broker_url
    if url.startswith(("redis://", "rediss://")):
        return {"visibility_timeout": settings.visibility_timeout_s}
    if url.startswith("sqla+sqlite"):
        # Passed to sqlalchemy.create_engine: wait for SQLite's write lock instead of failing.
        return {"connect_args": {"timeout": 30}}
    if url.startswith("filesystem"):
        log.warning("the filesystem broker can lose a worker to a half-written message; prefer the default or Redis")
        root = settings.home / "broker"
        queue_dir, processed, control = root / "queue", root / "processed", root / "control"
        for folder in (queue_dir, processed, control):
            folder.mkdir(parents=True, exist_ok=True)
        # Messages are renamed into `processed` on the same file system (an atomic claim) and kept there.
        return {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "control_folder": str(control),
            "store_processed": True,
            "processed_folder": str(processed),
        }
    return {}


def _tune_embedded_transport(url: str) -> None:
    """Poll the embedded brokers every 0.1 s (kombu's default is 1 s, which costs ~1 s per task)."""
    if url.startswith("sqla+"):
        from kombu.transport import sqlalchemy as sqla_transport  # loads kombu's SQLAlchemy transport: only for it

        sqla_transport.Transport.polling_interval = EMBEDDED_POLL_INTERVAL_S
    elif url.startswith("filesystem"):
        from kombu.transport import filesystem as filesystem_transport  # the same, for the filesystem transport

        filesystem_transport.Transport.polling_interval = EMBEDDED_POLL_INTERVAL_S


def make_app(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings`` (default: the process's settings)."""
    settings = settings or get_settings()
    url = settings.effective_broker_url
    if url.startswith("sqla+sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
    _tune_embedded_transport(url)
    app = Celery("vicap_jobs", broker=url, include=["vicap_jobs.worker.tasks"])
    exchange = Exchange(SHARED_QUEUE, type="direct")
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a restarted Redis is waited for, not given up on
        result_backend=settings.result_backend,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,  # a chunk that failed has its failure recorded in the store
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=None,  # keep the process: it caches loaded models
        worker_hijack_root_logger=False,
        worker_send_task_events=not settings.is_embedded_broker,  # Flower needs events; Redis only
        task_send_sent_event=not settings.is_embedded_broker,
        task_default_queue=SHARED_QUEUE,
        task_default_exchange=SHARED_QUEUE,
        task_default_routing_key=SHARED_QUEUE,
        task_queues=[Queue(SHARED_QUEUE, exchange, routing_key=SHARED_QUEUE)],
        task_create_missing_queues=True,  # gpu.N queues are declared when a worker or a job names them
        task_routes={"vicap.*": {"queue": SHARED_QUEUE}},
        task_serializer="json",
        accept_content=["json"],
        timezone=local_timezone_name(),
        enable_utc=True,
        worker_redirect_stdouts_level="INFO",
    )
    if settings.is_embedded_broker:
        # The embedded transports have no cross-process broadcast: no mingle/gossip traffic to wait for.
        app.conf.worker_enable_remote_control = url.startswith("filesystem")
    return app


app = make_app()
