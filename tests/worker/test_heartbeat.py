"""The heartbeat thread of a worker process: worker row, running chunk, running job, periodic reaping."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, select, update

from tests import store_helpers as jobs
from tests.worker.conftest import make_image_folder, register_tiny_model
from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Job, JobChunk, Worker
from vicap_jobs.jobs.lifecycle import create_job, start_job
from vicap_jobs.services import workers
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.worker.heartbeat import Heartbeat, reap_interval


def test_heartbeat_thread_beats_worker_and_chunk_and_reaps(
    vicap_env: Path, any_db: Engine, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    db = any_db
    register_tiny_model(db, tiny_checkpoint)
    make_image_folder(tmp_path / "photos", 2)
    plan = create_caption_job(
        db=db, folder=tmp_path / "photos", model=None, engine_name="torch", recursive=False, batch_size=2, chunk_size=2
    )
    (first,) = plan.chunk_ids
    jobs.claim_chunk(db, first, "gpu0@test")
    stale_beat = utcnow() - timedelta(seconds=600)
    with session_scope(db) as session:
        session.execute(update(JobChunk).where(JobChunk.id == first).values(heartbeat_at=stale_beat))
    reaps: list[float] = []
    heartbeat = Heartbeat(
        db=db,
        name="gpu0@test",
        queues=["vicap", "gpu.0"],
        device="cpu",
        pid=os.getpid(),
        interval_s=0.1,
        reap=lambda: reaps.append(time.monotonic()),
        reap_every_s=0.2,
    ).start()
    try:
        heartbeat.set_chunk(first)
        time.sleep(1.0)
    finally:
        heartbeat.stop()
    assert workers.live_workers(db=db, within_s=5) == ["gpu0@test"]
    with session_scope(db) as session:
        worker = session.scalar(select(Worker).where(Worker.name == "gpu0@test"))
        assert worker is not None and worker.queues == ["vicap", "gpu.0"] and worker.pid == os.getpid()
    assert jobs.requeue_stale_chunks(db, stale_after_s=5).requeued == []  # fresh again
    beat = jobs.get_chunk(db, first).heartbeat_at
    assert beat is not None and beat.replace(tzinfo=None) > stale_beat.replace(tzinfo=None)
    assert len(reaps) >= 2


def test_heartbeat_thread_beats_the_running_job(any_db: Engine) -> None:
    db = any_db
    with session_scope(db) as session:
        job_id = create_job(session=session, kind="export", params={"model": "m"})
        start_job(session=session, job_id=job_id)
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=600)))
    beat = Heartbeat(db=db, name="cpu@test", queues=["vicap"], device="cpu", pid=os.getpid(), interval_s=0.05)
    beat.set_job(job_id)
    beat.start()
    time.sleep(0.3)
    beat.stop()
    heartbeat_at = jobs.get_job(db, job_id).heartbeat_at
    assert heartbeat_at is not None and heartbeat_at.replace(tzinfo=None) > (utcnow() - timedelta(seconds=60)).replace(
        tzinfo=None
    )


def test_reap_interval_is_a_fraction_of_staleness_capped_at_30s() -> None:
    assert reap_interval(90) == 30
    assert reap_interval(6) == 2
    assert reap_interval(600) == 30
