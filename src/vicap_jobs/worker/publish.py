"""From job rows to broker messages: publish a job's messages, publish a recovery plan, revoke, peek at queues.

The only module that puts messages on the broker. Messages are published by task *name*
(``send_task``, names from the job-kind table), so publishing never imports the task module
(torch, engines). A message's broker task id is stored on its row before it is sent, so it can
always be revoked, and ``enqueued_at`` tells the reaper when it was sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kombu.exceptions import OperationalError as BrokerError
from kombu.utils.uuid import uuid
from sqlalchemy import Engine

from vicap_jobs.db.session import session_scope
from vicap_jobs.errors import VicapError
from vicap_jobs.jobs.chunks import mark_chunks_enqueued, open_chunk_ids
from vicap_jobs.jobs.kinds import get_job_kind
from vicap_jobs.jobs.lifecycle import get_job, mark_job_enqueued, retry_job
from vicap_jobs.jobs.queues import SHARED_QUEUE
from vicap_jobs.jobs.recovery import Redelivery
from vicap_jobs.settings import get_settings, mask_password
from vicap_jobs.worker.app import app

log = logging.getLogger(__name__)


class BrokerUnavailable(VicapError):
    """The broker cannot be reached; the job rows exist and a worker's reaper publishes them later."""


def publish_job(*, db: Engine, job_id: int) -> tuple[str, int]:
    """Publish a queued job's messages on its queue: its open chunks (unit "chunk") or the job itself.

    Returns (queue, number of messages). Raises BrokerUnavailable when the broker is down.
    """
    with session_scope(db) as session:
        job = get_job(session=session, job_id=job_id)
        kind = get_job_kind(job.kind)
        queue = job.queue or SHARED_QUEUE
        chunk_ids = open_chunk_ids(session=session, job_id=job_id) if kind.unit == "chunk" else []
    if kind.unit == "chunk":
        publish_chunks(db=db, task=kind.task, chunk_ids=chunk_ids, queue=queue)
        return queue, len(chunk_ids)
    task_id = uuid()
    with session_scope(db) as session:
        mark_job_enqueued(session=session, job_id=job_id, task_id=task_id)
    _send_all(kind.task, {job_id: task_id}, queue=queue)
    return queue, 1


def publish_chunks(*, db: Engine, task: str, chunk_ids: Iterable[int], queue: str) -> list[str]:
    """One message per chunk id; broker task ids are stored on the chunks first."""
    task_ids = {chunk_id: uuid() for chunk_id in chunk_ids}
    if not task_ids:
        return []
    with session_scope(db) as session:
        mark_chunks_enqueued(session=session, task_ids=task_ids)
    _send_all(task, task_ids, queue=queue)
    return list(task_ids.values())


def publish_redelivery(*, db: Engine, plan: Redelivery) -> None:
    """Publish again what a recovery rule returned: chunks on their queues, jobs on theirs."""
    for (kind, queue), chunk_ids in plan.chunks.items():
        publish_chunks(db=db, task=get_job_kind(kind).task, chunk_ids=chunk_ids, queue=queue)
    for job_id in plan.jobs:
        publish_job(db=db, job_id=job_id)


def retry_and_publish(*, db: Engine, job_id: int) -> tuple[str, list[int]]:
    """Re-open a finished job (``jobs.lifecycle.retry_job``) and publish what it re-opened.

    Returns (what was re-queued: "chunk" or "run", their ids). A caption or evaluate job re-opens
    chunks, which publishing the job sends; a sweep re-opens its failed runs, each a job of its own.
    """
    with session_scope(db) as session:
        kind = get_job(session=session, job_id=job_id).kind
        reopened = retry_job(session=session, job_id=job_id)
    if kind == "sweep":
        for run_id in reopened:
            publish_job(db=db, job_id=run_id)
        return "run", reopened
    publish_job(db=db, job_id=job_id)
    return "chunk", reopened


def revoke(task_ids: list[str]) -> None:
    """Ask workers to drop these queued messages (best effort: the store's cancelled status is what counts).

    The SQLAlchemy transport has no cross-process broadcast, so nothing is sent there.
    """
    if not task_ids or get_settings().effective_broker_url.startswith("sqla+"):
        return
    try:
        app.control.revoke(task_ids)
    except Exception:  # noqa: BLE001 - cancelling in the store already stops the chunks
        log.warning("could not broadcast revoke for %d task(s)", len(task_ids), exc_info=True)


def empty_queues(queues: Iterable[str]) -> set[str]:
    """The queues among ``queues`` that hold no waiting message (unknown when the broker is down: none)."""
    empty: set[str] = set()
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
            channel = connection.default_channel
            for queue in queues:
                try:
                    _, size, _ = channel.queue_declare(queue=queue, passive=True)
                except connection.channel_errors:
                    size = 0  # never declared, or deleted when it emptied (Redis)
                    channel = connection.channel()
                if size == 0:
                    empty.add(queue)
    except Exception:  # noqa: BLE001 - no broker, no verdict: try again next pass
        log.info("broker unreachable: lost-message check skipped", exc_info=True)
        return set()
    return empty


def _send_all(task: str, messages: dict[int, str], *, queue: str) -> None:
    """One ``task`` message per (id → broker task id) on ``queue``, over one producer connection."""
    try:
        with app.producer_or_acquire() as producer:
            for message_id, task_id in messages.items():
                app.send_task(task, args=(message_id,), queue=queue, task_id=task_id, producer=producer)
    except (BrokerError, OSError) as exc:
        raise _broker_down(exc) from None


def _broker_down(exc: BaseException) -> BrokerUnavailable:
    url = mask_password(get_settings().effective_broker_url)
    return BrokerUnavailable(
        f"cannot reach the broker at {url} ({exc}); the job is stored and will be enqueued by a worker once the broker is back"
    )
