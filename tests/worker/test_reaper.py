"""The reaper pass on real stores (SQLite and PostgreSQL) with the broker recorded: what it publishes, where.

Each recovery rule is unit-tested in ``tests/jobs/test_recovery.py``; here the pass that composes
them publishes exactly the right messages on the right queues. The real-process versions (SIGKILLed
workers, a restarted Redis) are in ``test_reliability.py``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from tests import store_helpers as jobs
from tests.worker.conftest import make_image_folder, register_tiny_model
from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Job, JobChunk
from vicap_jobs.jobs.lifecycle import create_job, start_job
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.settings import Settings
from vicap_jobs.worker import publish, reaper


@pytest.fixture
def caption_job(
    vicap_env: Path, any_db: Engine, tiny_checkpoint: Path, tmp_path: Path
) -> tuple[Engine, int, list[int]]:
    """A caption job pinned to GPU 1: 6 images in 3 chunks (all queued, never published)."""
    register_tiny_model(any_db, tiny_checkpoint)
    make_image_folder(tmp_path / "photos", 6)
    plan = create_caption_job(
        db=any_db,
        folder=tmp_path / "photos",
        model=None,
        engine_name="torch",
        recursive=False,
        batch_size=2,
        chunk_size=2,
        gpu=1,
    )
    return any_db, plan.job_id, plan.chunk_ids


class Broker:
    """Records what the reaper publishes (task, queue, ids); says which queues are empty."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, empty: set[str]) -> None:
        self.sent: list[tuple[str, str, list[int]]] = []
        self.empty = empty
        monkeypatch.setattr(publish, "_send_all", self._send_all)
        monkeypatch.setattr(reaper, "empty_queues", lambda queues: set(queues) & self.empty)

    def _send_all(self, task: str, messages: dict[int, str], *, queue: str) -> None:
        self.sent.append((task, queue, list(messages)))


def _age_chunk(db: Engine, chunk_id: int, seconds: float, column: str = "heartbeat_at") -> None:
    with session_scope(db) as session:
        session.execute(
            update(JobChunk).where(JobChunk.id == chunk_id).values({column: utcnow() - timedelta(seconds=seconds)})
        )


def _age_job(db: Engine, job_id: int, seconds: float, column: str) -> None:
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == job_id).values({column: utcnow() - timedelta(seconds=seconds)}))


def test_reaper_requeues_silent_running_chunks_on_their_queue(caption_job, monkeypatch, tmp_path: Path) -> None:
    db, job_id, (first, second, third) = caption_job
    broker = Broker(monkeypatch, empty=set())
    for chunk_id in (first, second, third):
        jobs.mark_chunk_enqueued(db, chunk_id, f"t{chunk_id}")
    jobs.claim_chunk(db, first, "gpu1@dead")
    jobs.claim_chunk(db, second, "gpu1@alive")
    _age_chunk(db, first, 600)
    report = reaper.reap(db=db, settings=Settings(home=tmp_path, stale_after_s=90))
    assert report.stale_chunks == [first]
    assert broker.sent == [("vicap.caption_chunk", "gpu.1", [first])]
    with session_scope(db) as session:
        states = dict(session.execute(select(JobChunk.id, JobChunk.status).where(JobChunk.job_id == job_id)).all())
    assert states == {first: "queued", second: "running", third: "queued"}
    assert jobs.get_chunk(db, first).heartbeat_at is None  # a queued chunk has no worker to be alive
    # Reaping again right away finds nothing: the requeued chunk was just published.
    assert not reaper.reap(db=db, settings=Settings(home=tmp_path, stale_after_s=90))


def test_reaper_republishes_queued_chunks_whose_message_was_lost_only_when_their_queue_is_empty(
    caption_job, monkeypatch, tmp_path: Path
) -> None:
    db, _, (first, second, third) = caption_job
    for chunk_id in (first, second, third):
        jobs.mark_chunk_enqueued(db, chunk_id, f"t{chunk_id}")
    for chunk_id in (first, second):
        _age_chunk(db, chunk_id, 600, column="enqueued_at")  # published ten minutes ago
    settings = Settings(home=tmp_path, stale_after_s=90)

    busy = Broker(monkeypatch, empty=set())  # messages still waiting: workers are just busy
    assert not reaper.reap(db=db, settings=settings) and busy.sent == []

    lost = Broker(monkeypatch, empty={"gpu.1"})  # the queue is empty yet the chunks never started
    assert reaper.reap(db=db, settings=settings).lost_chunks == [first, second]
    assert lost.sent == [("vicap.caption_chunk", "gpu.1", [first, second])]


def test_reaper_reruns_an_evaluate_job_through_its_task_not_as_caption_chunks(
    caption_job, monkeypatch, tmp_path: Path
) -> None:
    db, job_id, (first, _, _) = caption_job
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == job_id).values(kind="evaluate", status="running"))
    broker = Broker(monkeypatch, empty={"gpu.1", "vicap"})
    jobs.claim_chunk(db, first, "evaluate-1")
    _age_chunk(db, first, 600)
    _age_job(db, job_id, 600, "heartbeat_at")  # the evaluate job's own worker is silent too
    report = reaper.reap(db=db, settings=Settings(home=tmp_path, stale_after_s=90))
    assert report.stale_chunks == [first]
    assert report.stale_jobs == []  # redelivered once, through its chunk
    assert broker.sent == [("vicap.evaluate", "gpu.1", [job_id])]  # evaluate chunks have no messages of their own


def test_reaper_republishes_a_lost_train_job_and_finishes_a_drained_caption_job(
    caption_job, monkeypatch, tmp_path: Path
) -> None:
    db, caption_id, _ = caption_job
    with session_scope(db) as session:
        train_id = create_job(
            session=session, kind="train", params={"name": "m", "family": "f", "dataset": "d", "options": {}}
        )
    _age_job(db, train_id, 3600, "created_at")
    with session_scope(db) as session:
        # Every chunk ended, but the worker died before ending the job.
        session.execute(update(JobChunk).where(JobChunk.job_id == caption_id).values(status="done"))
        session.execute(update(Job).where(Job.id == caption_id).values(status="running"))
    broker = Broker(monkeypatch, empty={"vicap"})
    report = reaper.reap(db=db, settings=Settings(home=tmp_path, stale_after_s=90))
    assert report.lost_jobs == [train_id] and broker.sent == [("vicap.train", "vicap", [train_id])]
    assert report.finished_jobs == [caption_id]
    assert jobs.get_job(db, caption_id).status == "succeeded"
    assert jobs.get_job(db, train_id).enqueued_at is not None


def test_reaper_republishes_a_running_train_job_whose_worker_died_on_its_gpu_queue(
    vicap_env: Path, any_db: Engine, monkeypatch, tmp_path: Path
) -> None:
    db = any_db
    params = {"name": "m", "family": "f", "dataset": "d", "options": {}}
    with session_scope(db) as session:
        train_id = create_job(session=session, kind="train", params=params, gpu=1)
        start_job(session=session, job_id=train_id)
        alive_id = create_job(session=session, kind="export", params={"model": "m"})
        start_job(session=session, job_id=alive_id)
    _age_job(db, train_id, 600, "heartbeat_at")
    broker = Broker(monkeypatch, empty=set())
    settings = Settings(home=tmp_path, stale_after_s=90, max_chunk_attempts=2)
    report = reaper.reap(db=db, settings=settings)
    assert report.stale_jobs == [train_id] and broker.sent == [("vicap.train", "gpu.1", [train_id])]
    job = jobs.get_job(db, train_id)
    assert (job.status, job.attempts) == ("queued", 1)
    assert jobs.get_job(db, alive_id).status == "running"
    # it dies again: the second death gives up with a reason, and nothing is published
    with session_scope(db) as session:
        start_job(session=session, job_id=train_id)
    _age_job(db, train_id, 600, "heartbeat_at")
    broker.sent.clear()
    assert reaper.reap(db=db, settings=settings).stale_jobs == [] and broker.sent == []
    job = jobs.get_job(db, train_id)
    assert job.status == "failed" and "gave up after 2 attempts" in (job.error or "")
