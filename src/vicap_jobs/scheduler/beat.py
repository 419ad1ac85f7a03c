"""Celery beat: nightly re-evaluation and the stale-chunk reaper.

- Every night at ``VICAP_NIGHTLY_CRON`` (default ``0 2 * * *``, local time) a
  worker runs ``nightly_evaluate``: one ``evaluate`` job per registered model ×
  data set split marked for re-evaluation (``dataset nightly``), plus a fresh
  blind-baseline row for each of those splits; results land as new
  ``evaluations`` rows, so quality over time is a SQL query.
- Every ``REAP_EVERY_S`` seconds a worker runs ``reap_stale_chunks`` (live
  workers also reap from their heartbeat thread; either is enough).

Start it with ``vicap-jobs scheduler`` (one per deployment).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.schedules import crontab
from sqlalchemy import Engine

from vicap_jobs.errors import ConfigError
from vicap_jobs.settings import Settings, get_settings
from vicap_jobs.worker.app import SHARED_QUEUE, TASK_NIGHTLY, TASK_REAP

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


def enqueue_nightly_evaluations(*, db: Engine) -> list[int]:
    """Create and enqueue tonight's evaluate jobs, and refresh the blind baseline of each split; returns job ids."""
    from vicap_jobs.services.datasets import get_dataset
    from vicap_jobs.services.evaluation import create_evaluate_job, ensure_baseline, nightly_targets
    from vicap_jobs.worker.dispatch import enqueue_job

    job_ids: list[int] = []
    splits: set[tuple[str, str]] = set()
    for model, dataset, split in nightly_targets(db=db):
        splits.add((dataset, split))
        try:
            job_id = create_evaluate_job(db=db, model=model, dataset=dataset, split=split)
        except Exception as exc:  # noqa: BLE001 - one broken model must not stop the others
            log.warning("nightly: cannot evaluate %s on %s/%s: %s", model, dataset, split, exc)
            continue
        enqueue_job(db=db, job_id=job_id, kind="evaluate")
        job_ids.append(job_id)
    for dataset, split in sorted(splits):
        try:
            ensure_baseline(
                db=db,
                dataset_id=get_dataset(db=db, name=dataset).id,
                split=split,
                tokenization="syllable",
                refresh=True,
            )
        except Exception as exc:  # noqa: BLE001
            log.warning("nightly: no blind baseline for %s/%s: %s", dataset, split, exc)
    log.info("nightly: enqueued %d evaluate job(s) over %d split(s)", len(job_ids), len(splits))
    return job_ids


def configure_beat(app: Any, settings: Settings | None = None) -> None:
    """Install the schedule on ``app`` (the scheduler command calls it before starting beat)."""
    app.conf.beat_schedule = beat_schedule(settings)
