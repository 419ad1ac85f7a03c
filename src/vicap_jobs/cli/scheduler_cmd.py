"""``vicap-jobs scheduler``: Celery beat (nightly re-evaluation, stale-chunk reaper)."""

from __future__ import annotations

import click

from vicap_jobs.settings import get_settings


@click.command()
@click.option("--loglevel", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
def scheduler(loglevel: str) -> None:
    """Run the scheduler (Celery beat); start exactly one per deployment.

    Every night at VICAP_NIGHTLY_CRON (default `0 2 * * *`, local time) it
    enqueues an evaluate job for every registered model on every data set split
    marked for re-evaluation (`vicap-jobs dataset nightly NAME --split test`),
    plus a fresh blind-baseline row per split; scores land in `evaluations`.
    Every 30 s it also has a worker re-enqueue chunks whose worker went silent.
    Workers do the work: start at least one (`vicap-jobs worker`).

    Flower watches the same broker: `pip install "vicap-jobs[monitor]"`, then
    `celery -A vicap_jobs.worker.app flower` (http://localhost:5555).

    Example:

    \b
        VICAP_NIGHTLY_CRON="30 3 * * *" vicap-jobs scheduler
        celery -A vicap_jobs.worker.app flower --port=5555
    """
    from vicap_jobs.scheduler.beat import configure_beat  # Celery: only when the scheduler runs
    from vicap_jobs.worker.app import app  # the Celery app, made from the settings at import

    settings = get_settings()
    configure_beat(app, settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    click.echo(f"scheduler: nightly evaluation at cron {settings.nightly_cron!r} ({app.conf.timezone})", err=True)
    app.start(
        [
            "beat",
            f"--schedule={settings.home / 'celerybeat-schedule'}",
            f"--loglevel={loglevel.upper()}",
        ]
    )
