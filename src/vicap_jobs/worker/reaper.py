"""One reaper pass: apply the recovery rules of ``vicap_jobs.jobs.recovery`` and publish what they return.

Run by every live worker's heartbeat thread (every ``reap_interval``) and by the scheduler's
``reap_stale_chunks`` task; either is enough, and running them from many workers at once is safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine

from vicap_jobs.db.session import session_scope
from vicap_jobs.jobs.chunks import finish_if_drained
from vicap_jobs.jobs.recovery import (
    Redelivery,
    drained_job_ids,
    redelivery_for_chunks,
    requeue_stale_chunks,
    requeue_stale_jobs,
    waiting_too_long,
)
from vicap_jobs.settings import Settings, get_settings
from vicap_jobs.worker.publish import empty_queues, publish_redelivery

log = logging.getLogger(__name__)


@dataclass
class ReapReport:
    """What one reaper pass did."""

    stale_chunks: list[int] = field(default_factory=list)
    given_up_chunks: list[int] = field(default_factory=list)
    stale_jobs: list[int] = field(default_factory=list)
    lost_chunks: list[int] = field(default_factory=list)
    lost_jobs: list[int] = field(default_factory=list)
    finished_jobs: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in self.__dataclass_fields__)


def reap(*, db: Engine, settings: Settings | None = None) -> ReapReport:
    """Re-publish the work of dead workers and lost messages; end drained jobs. Safe to run anywhere, any time."""
    settings = settings or get_settings()
    report = ReapReport()
    with session_scope(db) as session:
        stale = requeue_stale_chunks(
            session=session, stale_after_s=settings.stale_after_s, max_attempts=settings.max_chunk_attempts
        )
        redelivery = redelivery_for_chunks(session=session, chunk_ids=stale.requeued)
    report.stale_chunks, report.given_up_chunks = stale.requeued, stale.given_up
    with session_scope(db) as session:
        report.stale_jobs = requeue_stale_jobs(
            session=session,
            stale_after_s=settings.stale_after_s,
            max_attempts=settings.max_chunk_attempts,
            skip=set(redelivery.jobs),
        )
    redelivery.jobs += report.stale_jobs
    publish_redelivery(db=db, plan=redelivery)

    with session_scope(db) as session:
        waiting_chunks, waiting_jobs = waiting_too_long(session=session, stale_after_s=settings.stale_after_s)
    if waiting_chunks or waiting_jobs:
        empty = empty_queues({queue for _, queue in waiting_chunks} | set(waiting_jobs))
        lost = Redelivery(
            chunks={key: ids for key, ids in waiting_chunks.items() if key[1] in empty},
            jobs=[job_id for queue, ids in waiting_jobs.items() if queue in empty for job_id in ids],
        )
        report.lost_chunks = [chunk_id for ids in lost.chunks.values() for chunk_id in ids]
        report.lost_jobs = lost.jobs
        publish_redelivery(db=db, plan=lost)

    with session_scope(db) as session:
        drained = drained_job_ids(session=session)
    for job_id in drained:
        with session_scope(db) as session:
            if finish_if_drained(session=session, job_id=job_id):
                report.finished_jobs.append(job_id)
    if report:
        log.warning(
            "reaper: re-enqueued %d stale and %d lost chunk(s), %d stale and %d lost job(s); "
            "gave up %d chunk(s); finished %d drained job(s)",
            len(report.stale_chunks),
            len(report.lost_chunks),
            len(report.stale_jobs),
            len(report.lost_jobs),
            len(report.given_up_chunks),
            len(report.finished_jobs),
        )
    return report
