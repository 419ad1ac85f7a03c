"""The beat schedule (nightly re-evaluation, reaper), the nightly enqueueing, and a real beat process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import Engine, func, select

from tests.worker.conftest import build_tiny_checkpoint, import_coco_dataset, register_tiny_model
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Evaluation, Job
from vicap_jobs.scheduler import beat
from vicap_jobs.services.nightly import create_nightly_jobs
from vicap_jobs.settings import Settings
from vicap_jobs.worker import tasks
from vicap_jobs.worker.app import local_timezone_name


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model") / "tiny")


def test_default_schedule_is_nightly_at_two_local_time_plus_the_reaper(vicap_env: Path) -> None:
    schedule = beat.beat_schedule(Settings())
    nightly = schedule["nightly-evaluate"]["schedule"]
    assert nightly.hour == {2} and nightly.minute == {0} and len(nightly.day_of_week) == 7
    assert schedule["nightly-evaluate"]["task"] == "vicap.nightly_evaluate"
    assert schedule["reap-stale-chunks"]["schedule"] == beat.REAP_EVERY_S == 30
    assert schedule["reap-stale-chunks"]["task"] == "vicap.reap_stale_chunks"


def test_cron_comes_from_settings(vicap_setenv) -> None:  # type: ignore[no-untyped-def]
    vicap_setenv("nightly_cron", "30 3 * * 1-5")
    from vicap_jobs.settings import get_settings

    nightly = beat.beat_schedule(get_settings())["nightly-evaluate"]["schedule"]
    assert nightly.hour == {3} and nightly.minute == {30} and nightly.day_of_week == {1, 2, 3, 4, 5}


def test_the_app_runs_in_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Ho_Chi_Minh")
    assert local_timezone_name() == "Asia/Ho_Chi_Minh"
    monkeypatch.delenv("TZ")
    assert local_timezone_name()  # /etc/localtime, or UTC


def test_nightly_enqueues_one_evaluate_job_per_model_and_marked_split_and_refreshes_the_baseline(
    vicap_env: Path, any_db: Engine, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vicap_jobs.services.datasets import set_nightly_splits

    register_tiny_model(any_db, tiny_checkpoint, name="tiny-a")
    register_tiny_model(any_db, tiny_checkpoint, name="tiny-b")
    import_coco_dataset(any_db, tmp_path / "coco")
    import_coco_dataset(any_db, tmp_path / "coco2", name="not-nightly")
    set_nightly_splits(db=any_db, name="coco-mini", splits=["test"])
    sent: list[int] = []
    monkeypatch.setattr(tasks.process, "state", lambda: SimpleNamespace(db=any_db))
    monkeypatch.setattr(tasks, "publish_job", lambda *, db, job_id: sent.append(job_id))

    job_ids = tasks.nightly_evaluate.run()  # the task body, as a worker runs it

    assert len(job_ids) == 2 and sent == job_ids
    with session_scope(any_db) as session:
        assert {session.get(Job, j).kind for j in job_ids} == {"evaluate"}
        params = [session.get(Job, j).params for j in job_ids]
        baselines = session.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.is_baseline))
    assert sorted(p["model"] for p in params) == ["tiny-a", "tiny-b"]
    assert {(p["dataset"], p["split"]) for p in params} == {("coco-mini", "test")}
    assert baselines == 1
    create_nightly_jobs(db=any_db)
    with session_scope(any_db) as session:
        assert session.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.is_baseline)) == 2


@pytest.mark.slow
def test_scheduler_command_starts_beat_with_the_schedule(vicap_env: Path, tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("VICAP_")}
    env.update(VICAP_HOME=str(tmp_path / "home"), VICAP_NIGHTLY_CRON="15 4 * * *")
    log = tmp_path / "beat.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "vicap_jobs.cli.main", "scheduler", "--loglevel", "debug"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "nightly-evaluate" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(20)
    text = log.read_text(errors="replace")
    assert "beat: Starting" in text and "'15 4 * * *'" in text, text
    assert (tmp_path / "home").is_dir()
