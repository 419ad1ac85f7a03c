"""Celery configuration, queue routing, the reaper's rules and the heartbeat thread — no worker processes.

The reaper is tested in-process on real stores with the broker calls recorded,
so each recovery rule is pinned down exactly; the real-process versions are in
``test_reliability.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from tests.worker.conftest import make_image_folder, register_tiny_model
from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Job, JobChunk, Worker
from vicap_jobs.errors import ConfigError, InputError
from vicap_jobs.services import jobs, workers
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.settings import Settings
from vicap_jobs.worker import dispatch
from vicap_jobs.worker.app import SHARED_QUEUE, broker_transport_options, gpu_queue, make_app
from vicap_jobs.worker.heartbeat import Heartbeat, reap_interval

# -- the Celery app ---------------------------------------------------------------------------


def test_app_is_configured_for_crash_safety(vicap_env: Path, tmp_path: Path) -> None:
    app = make_app(Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/0", visibility_timeout_s=7200))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result and conf.result_backend is None
    assert conf.broker_transport_options == {"visibility_timeout": 7200}
    assert conf.task_default_queue == SHARED_QUEUE == "vicap"
    assert conf.broker_connection_max_retries is None  # a restarted Redis is waited for
    assert conf.worker_send_task_events  # Flower


def test_embedded_sqlalchemy_broker_polls_fast_without_the_crashing_option(vicap_env: Path, tmp_path: Path) -> None:
    from kombu.transport.sqlalchemy import Transport

    settings = Settings(home=tmp_path)
    assert settings.effective_broker_url.startswith("sqla+sqlite:///")
    app = make_app(settings)
    options = app.conf.broker_transport_options
    assert "polling_interval" not in options  # create_engine() would reject it
    assert Transport.polling_interval == pytest.approx(0.1)
    assert not app.conf.worker_send_task_events


def test_filesystem_broker_keeps_its_folders_under_home(vicap_env: Path, tmp_path: Path) -> None:
    options = broker_transport_options(Settings(home=tmp_path, broker_url="filesystem://"))
    assert options["data_folder_in"] == options["data_folder_out"] == str(tmp_path / "broker" / "queue")
    assert options["store_processed"] and Path(options["processed_folder"]).is_dir()


def test_queues_follow_the_requested_gpu() -> None:
    assert dispatch.queue_for_gpu(None) == "vicap"
    assert dispatch.queue_for_gpu(1) == gpu_queue(1) == "gpu.1"
    assert dispatch.queue_for_params({"device": dispatch.device_for_gpu(3)}) == "gpu.3"
    assert dispatch.queue_for_params({"device": None}) == dispatch.queue_for_params({}) == "vicap"


def test_gpu_pinning_happens_before_torch_is_imported() -> None:
    code = (
        "import os, sys\n"
        "from vicap_jobs.worker.gpu import pin_gpu, node_name, process_device\n"
        "pin_gpu(1)\n"
        "assert os.environ['CUDA_VISIBLE_DEVICES'] == '1'\n"
        "assert 'torch' not in sys.modules\n"
        "print(process_device(), node_name(1).split('@')[0], node_name(None).split('@')[0])\n"
        "import torch\n"
        "try:\n"
        "    pin_gpu(0)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    device, gpu_name, cpu_name, error = out.stdout.split()
    assert device in ("cpu", "cuda:0")  # one visible GPU is cuda:0; on a CPU host it runs on the CPU
    assert (gpu_name, cpu_name, error) == ("gpu1", "cpu", "ConfigError")


def test_worker_command_rejects_contradictory_options() -> None:
    from click.testing import CliRunner

    from vicap_jobs.cli.main import cli

    result = CliRunner().invoke(cli, ["worker", "--gpu", "0", "--concurrency", "2"])
    assert result.exit_code == 1 and "one worker per GPU" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(InputError):
        from vicap_jobs.worker.gpu import pin_gpu

        pin_gpu(-1)


# -- the reaper -------------------------------------------------------------------------------


@pytest.fixture
def caption_job(
    vicap_env: Path, any_db: Engine, tiny_checkpoint: Path, tmp_path: Path
) -> tuple[Engine, int, list[int]]:
    """A caption job of 6 images in 3 chunks (all queued) on SQLite or PostgreSQL."""
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
        device=dispatch.device_for_gpu(1),
    )
    return any_db, plan.job_id, plan.chunk_ids


class Broker:
    """Records what the dispatcher would publish; says which queues are empty."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, empty: set[str]) -> None:
        self.chunks: list[tuple[str, list[int]]] = []
        self.jobs: list[tuple[str, int, str]] = []
        self.empty = empty
        monkeypatch.setattr(dispatch, "enqueue_chunks", self._chunks)
        monkeypatch.setattr(dispatch, "enqueue_job", self._job)
        monkeypatch.setattr(dispatch, "_empty_queues", lambda queues: queues & self.empty)

    def _chunks(self, *, db: Engine, chunk_ids: list[int], queue: str = "vicap") -> list[str]:
        self.chunks.append((queue, list(chunk_ids)))
        for chunk_id in chunk_ids:
            jobs.touch_chunk(db=db, chunk_id=chunk_id)
        return [f"t{c}" for c in chunk_ids]

    def _job(self, *, db: Engine, job_id: int, kind: str, queue: str = "vicap") -> str:
        self.jobs.append((kind, job_id, queue))
        return f"j{job_id}"


def _age_chunk(db: Engine, chunk_id: int, seconds: float) -> None:
    with session_scope(db) as session:
        session.execute(
            update(JobChunk).where(JobChunk.id == chunk_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_reaper_requeues_silent_running_chunks_on_their_queue(caption_job, monkeypatch, tmp_path: Path) -> None:
    db, job_id, (first, second, third) = caption_job
    broker = Broker(monkeypatch, empty=set())
    jobs.claim_chunk(db=db, chunk_id=first, worker_name="gpu1@dead")
    jobs.claim_chunk(db=db, chunk_id=second, worker_name="gpu1@alive")
    _age_chunk(db, first, 600)
    report = dispatch.reap(db=db, settings=Settings(home=tmp_path, stale_after_s=90))
    assert report.stale_chunks == [first]
    assert broker.chunks == [("gpu.1", [first])]
    with session_scope(db) as session:
        states = dict(session.execute(select(JobChunk.id, JobChunk.status).where(JobChunk.job_id == job_id)).all())
    assert states == {first: "queued", second: "running", third: "queued"}
    # Reaping again right away finds nothing: the requeued chunk was just enqueued.
    assert not dispatch.reap(db=db, settings=Settings(home=tmp_path, stale_after_s=90))


def test_reaper_reenqueues_queued_chunks_whose_message_was_lost_only_when_their_queue_is_empty(
    caption_job, monkeypatch, tmp_path: Path
) -> None:
    db, _, (first, second, third) = caption_job
    for chunk_id in (first, second):
        _age_chunk(db, chunk_id, 600)  # enqueued ten minutes ago
    _age_chunk(db, third, 1)  # enqueued just now
    settings = Settings(home=tmp_path, stale_after_s=90)

    busy = Broker(monkeypatch, empty=set())  # messages still waiting: workers are just busy
    assert not dispatch.reap(db=db, settings=settings) and busy.chunks == []

    lost = Broker(monkeypatch, empty={"gpu.1"})  # the queue is empty yet the chunks never started
    assert dispatch.reap(db=db, settings=settings).lost_chunks == [first, second]
    assert lost.chunks == [("gpu.1", [first, second])]


def test_reaper_reruns_an_evaluate_job_through_its_task_not_as_caption_chunks(
    caption_job, monkeypatch, tmp_path: Path
) -> None:
    db, job_id, (first, _, _) = caption_job
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == job_id).values(kind="evaluate", status="running"))
    broker = Broker(monkeypatch, empty={"gpu.1", "vicap"})
    jobs.claim_chunk(db=db, chunk_id=first, worker_name="evaluate-1")
    _age_chunk(db, first, 600)
    report = dispatch.reap(db=db, settings=Settings(home=tmp_path, stale_after_s=90))
    assert report.stale_chunks == [first]
    assert broker.chunks == []  # evaluate chunks have no messages of their own
    assert broker.jobs == [("evaluate", job_id, "gpu.1")]


def test_reaper_reenqueues_a_lost_train_job_and_finishes_a_drained_caption_job(
    caption_job, monkeypatch, tmp_path: Path
) -> None:
    db, caption_id, chunk_ids = caption_job
    train_id = jobs.create_job(db=db, kind="train", params={"name": "m"})
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == train_id).values(created_at=utcnow() - timedelta(hours=1)))
        # Every chunk ended, but the worker died before closing the job.
        session.execute(update(JobChunk).where(JobChunk.job_id == caption_id).values(status="done"))
        session.execute(update(Job).where(Job.id == caption_id).values(status="running"))
    broker = Broker(monkeypatch, empty={"vicap"})
    report = dispatch.reap(db=db, settings=Settings(home=tmp_path, stale_after_s=90))
    assert report.lost_jobs == [train_id] and broker.jobs == [("train", train_id, "vicap")]
    assert report.finished_jobs == [caption_id]
    assert jobs.get_job(db=db, job_id=caption_id).status in ("succeeded", "failed")


# -- the heartbeat thread ---------------------------------------------------------------------


def test_heartbeat_thread_beats_worker_and_chunk_and_reaps(caption_job) -> None:
    db, _, (first, _, _) = caption_job
    jobs.claim_chunk(db=db, chunk_id=first, worker_name="gpu0@test")
    _age_chunk(db, first, 600)
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
        assert worker.queues == ["vicap", "gpu.0"] and worker.pid == os.getpid()
        beat = session.scalar(select(JobChunk.heartbeat_at).where(JobChunk.id == first))
    assert jobs.stale_chunk_ids(db=db, stale_after_s=5) == []  # fresh again
    assert beat is not None
    assert len(reaps) >= 2


def test_reap_interval_is_a_fraction_of_staleness_capped_at_30s() -> None:
    assert reap_interval(90) == 30
    assert reap_interval(6) == 2
    assert reap_interval(600) == 30


def test_bad_nightly_cron_is_a_config_error() -> None:
    from vicap_jobs.scheduler.beat import parse_cron

    with pytest.raises(ConfigError, match="5 fields"):
        parse_cron("0 2 * *")
    with pytest.raises(ConfigError, match="invalid"):
        parse_cron("99 2 * * *")


def test_reaper_reenqueues_a_running_train_job_whose_worker_died(
    vicap_env: Path, any_db: Engine, monkeypatch, tmp_path: Path
) -> None:
    db = any_db
    train_id = jobs.create_job(db=db, kind="train", params={"name": "m", "device": "gpu1"})
    jobs.mark_running(db=db, job_id=train_id)
    alive_id = jobs.create_job(db=db, kind="export", params={"model": "m"})
    jobs.mark_running(db=db, job_id=alive_id)
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == train_id).values(heartbeat_at=utcnow() - timedelta(seconds=600)))
    broker = Broker(monkeypatch, empty=set())
    settings = Settings(home=tmp_path, stale_after_s=90, max_chunk_attempts=2)
    report = dispatch.reap(db=db, settings=settings)
    assert report.stale_jobs == [train_id] and broker.jobs == [("train", train_id, "gpu.1")]
    job = jobs.get_job(db=db, job_id=train_id)
    assert (job.status, job.attempts) == ("queued", 1)
    assert jobs.get_job(db=db, job_id=alive_id).status == "running"
    # it dies again: the second death gives up with a reason
    jobs.mark_running(db=db, job_id=train_id)
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == train_id).values(heartbeat_at=utcnow() - timedelta(seconds=600)))
    assert jobs.requeue_jobs(db=db, job_ids=jobs.stale_job_ids(db=db, stale_after_s=90), max_attempts=2) == []
    job = jobs.get_job(db=db, job_id=train_id)
    assert job.status == "failed" and "gave up after 2 attempts" in job.error


def test_heartbeat_thread_beats_the_running_job(any_db: Engine) -> None:
    db = any_db
    job_id = jobs.create_job(db=db, kind="train", params={})
    jobs.mark_running(db=db, job_id=job_id)
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=600)))
    beat = Heartbeat(db=db, name="cpu@test", queues=["vicap"], device="cpu", pid=os.getpid(), interval_s=0.05)
    beat.set_job(job_id)
    beat.start()
    time.sleep(0.3)
    beat.stop()
    assert jobs.stale_job_ids(db=db, stale_after_s=60) == []
