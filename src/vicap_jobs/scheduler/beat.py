"""Celery beat: nightly re-evaluation and the stale-chunk reaper.

- Every night at ``VICAP_NIGHTLY_CRON`` (default ``0 2 * * *``, local time) a
  worker runs ``nightly_evaluate`` (``vicap_jobs.services.nightly``): one ``evaluate``
  job per registered model × data set split marked for re-evaluation
  (``dataset nightly``), plus a fresh blind-baseline row for each of those splits;
  results land as new ``evaluations`` rows, so quality over time is a SQL query.
- Every ``REAP_EVERY_S`` seconds a worker runs ``reap_stale_chunks`` (live
  workers also reap from their heartbeat thread; either is enough).

Start it with ``vicap-jobs scheduler`` (one per deployment).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.schedules import crontab

from vicap_jobs.errors import ConfigError
from vicap_jobs.jobs.queues import SHARED_QUEUE
from vicap_jobs.settings import Settings, get_settings
from vicap_jobs.worker.app import TASK_NIGHTLY, TASK_REAP

log = logging.getLogger(__name__)

REAP_EVERY_S = 30.0


def parse_cron(expression: str) -> crontab:
    """``minute hour day-of-month month day-of-week`` → a Celery crontab; a bad one raises ConfigError."""
    fields = expression.split()
    if len(fields) != 5:
        raise ConfigError(f"VICAP_NIGHTLY_CRON must have 5 fields (minute hour day month weekday), got {expression!r}")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        schedule = crontab(
            minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year, day_of_week=day_of_week
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid VICAP_NIGHTLY_CRON {expression!r}: {exc}") from None
    return schedule


def beat_schedule(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """The beat schedule (``app.conf.beat_schedule``) for ``settings``."""
    settings = settings or get_settings()
    return {
        "nightly-evaluate": {
            "task": TASK_NIGHTLY,
            "schedule": parse_cron(settings.nightly_cron),
            "options": {"queue": SHARED_QUEUE},
        },
        "reap-stale-chunks": {
            "task": TASK_REAP,
            "schedule": REAP_EVERY_S,
            "options": {"queue": SHARED_QUEUE, "expires": REAP_EVERY_S},  # a backlog of reapers is useless
        },
    }


def configure_beat(app: Celery, settings: Settings | None = None) -> None:
    """Install the schedule on ``app`` (the scheduler command calls it before starting beat)."""
    app.conf.beat_schedule = beat_schedule(settings)
