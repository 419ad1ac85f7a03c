"""The job system under failure, with REAL worker processes and a real (private) Redis.

Workers are ``vicap-jobs worker`` subprocesses; jobs are submitted with
``vicap-jobs submit``; the test process only reads the store. Heartbeats are
1 s and a chunk goes stale after 6 s (VICAP_HEARTBEAT_S / VICAP_STALE_AFTER_S),
so recovery is measured in seconds, not in the broker's visibility timeout
(3 h by default, never reached here).
"""

from __future__ import annotations

import re
import socket
import time
import unicodedata
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.data.hostile import NFD_NAME, OK, make_hostile_folder
from tests.worker.conftest import Deployment, make_image_folder
from vicap_jobs.db.tables import Caption, Image

pytestmark = [pytest.mark.slow, pytest.mark.redis]

#: Big enough that a job is still running when the test strikes (each image is decoded from SOURCE_SIZE px).
N_IMAGES = 320
SOURCE_SIZE = 160


def submitted_job_id(output: str) -> int:
    match = re.search(r"job (\d+) queued", output)
    assert match, output
    return int(match.group(1))


def wait_until_done_at_least(dep: Deployment, job_id: int, n: int, timeout: float = 90) -> None:
    dep.wait_for(
        lambda: dep.job(job_id).done >= n, timeout=timeout, what=f"job {job_id} to caption {n} images", poll_s=0.05
    )


def assert_one_caption_per_image(dep: Deployment, job_id: int, n_images: int) -> None:
    rows, images, most = dep.caption_counts(job_id)
    assert (rows, images, most) == (n_images, n_images, 1), dep.worker_logs()
    job = dep.job(job_id)
    assert (job.done, job.total) == (n_images, n_images)


def test_sigkilled_worker_job_completes_on_a_new_worker(
    make_deployment, private_redis, store_url, tmp_path: Path
) -> None:
    dep = make_deployment(store_url, private_redis.url)
    make_image_folder(tmp_path / "photos", N_IMAGES, size=SOURCE_SIZE)
    first = dep.start_worker("--gpu", "0", log_name="first")
    job_id = submitted_job_id(
        dep.cli("submit", "caption", "--dir", str(tmp_path / "photos"), "--chunk-size", "8", "--batch-size", "1").stdout
    )
    wait_until_done_at_least(dep, job_id, 20)
    dep.kill_worker(first)  # the worker and its pool child, mid-chunk, without any cleanup
    killed_at = dep.job(job_id).done
    assert dep.job(job_id).status == "running" and killed_at < N_IMAGES, "the job ended before the kill"

    started = time.monotonic()
    dep.start_worker("--gpu", "0", log_name="second")
    assert dep.wait_job_finished(job_id, timeout=150) == "succeeded", dep.worker_logs()
    recovery_s = time.monotonic() - started
    assert_one_caption_per_image(dep, job_id, N_IMAGES)
    assert recovery_s < 120  # far below the 3 h visibility timeout


def test_redis_restart_mid_job_workers_reconnect_and_finish(make_deployment, private_redis, tmp_path: Path) -> None:
    dep = make_deployment(None, private_redis.url)
    make_image_folder(tmp_path / "photos", N_IMAGES, size=SOURCE_SIZE)
    dep.start_worker("--cpu")
    job_id = submitted_job_id(
        dep.cli("submit", "caption", "--dir", str(tmp_path / "photos"), "--chunk-size", "8", "--batch-size", "1").stdout
    )
    wait_until_done_at_least(dep, job_id, 20)
    private_redis.restart(down_s=2.0)  # no persistence: every queued message is gone
    assert dep.job(job_id).status == "running"
    assert dep.wait_job_finished(job_id, timeout=150) == "succeeded", dep.worker_logs()
    assert_one_caption_per_image(dep, job_id, N_IMAGES)


def test_two_gpu_workers_share_chunks_without_duplicates(
    make_deployment, private_redis, store_url, tmp_path: Path
) -> None:
    dep = make_deployment(store_url, private_redis.url)
    make_image_folder(tmp_path / "photos", 160, size=64)
    dep.start_worker("--gpu", "0")
    dep.start_worker("--gpu", "1")
    host = socket.gethostname()
    dep.wait_for(
        lambda: {f"gpu0@{host}", f"gpu1@{host}"} <= set(_live(dep)), timeout=60, what="both workers' heartbeats"
    )
    job_id = submitted_job_id(
        dep.cli("submit", "caption", "--dir", str(tmp_path / "photos"), "--chunk-size", "4", "--batch-size", "2").stdout
    )
    assert dep.wait_job_finished(job_id, timeout=120) == "succeeded", dep.worker_logs()
    assert_one_caption_per_image(dep, job_id, 160)
    assert set(dep.chunk_workers(job_id).values()) == {f"gpu0@{host}", f"gpu1@{host}"}

    # A job pinned with --gpu 1 goes to queue gpu.1: only that worker runs it.
    pinned = submitted_job_id(
        dep.cli("submit", "caption", "--dir", str(tmp_path / "photos"), "--chunk-size", "40", "--gpu", "1").stdout
    )
    assert dep.wait_job_finished(pinned, timeout=90) == "succeeded", dep.worker_logs()
    assert set(dep.chunk_workers(pinned).values()) == {f"gpu1@{host}"}


def test_hostile_folder_job_succeeds_with_readable_reasons(make_deployment, tmp_path: Path) -> None:
    dep = make_deployment()  # embedded broker, SQLite store
    expected = make_hostile_folder(tmp_path / "hostile")
    done = dep.cli(
        "submit", "caption", "--dir", str(tmp_path / "hostile"), "--recursive", "--batch-size", "4", "--wait"
    )
    assert "Traceback" not in done.stdout + done.stderr
    job_id = submitted_job_id(done.stdout)
    assert dep.job(job_id).status == "succeeded"
    with dep.db.connect() as connection:
        rows = connection.execute(
            select(Image.path, Caption.status, Caption.text, Caption.error)
            .join(Caption, Caption.image_id == Image.id)
            .where(Caption.job_id == job_id)
        ).all()
    root = (tmp_path / "hostile").resolve()
    outcome = {Path(path).relative_to(root).as_posix(): (status, text, error) for path, status, text, error in rows}
    assert set(outcome) == set(expected)
    for name, want in expected.items():
        status, text, error = outcome[name]
        if want == OK:
            assert status == "ok" and text, (name, error)
        else:
            assert status == "error" and want in error, (name, error)
            assert "Traceback" not in error and len(error) < 300
    assert unicodedata.normalize("NFD", NFD_NAME) in outcome  # the NFD name was kept as on disk
    assert f"{sum(v != OK for v in expected.values())} failed" in done.stdout


def test_embedded_default_submit_wait_needs_no_redis(make_deployment, tmp_path: Path) -> None:
    """VICAP_BROKER_URL unset: the embedded broker, and a local worker started because none is running."""
    dep = make_deployment(None, None, VICAP_CHUNK_SIZE="10")
    assert "VICAP_BROKER_URL" not in dep.env
    make_image_folder(tmp_path / "photos", 30)
    done = dep.cli("submit", "caption", "--dir", str(tmp_path / "photos"), "--wait")
    assert "no worker is running: starting a local worker" in done.stdout + done.stderr
    job_id = submitted_job_id(done.stdout)
    assert dep.job(job_id).status == "succeeded"
    assert_one_caption_per_image(dep, job_id, 30)
    assert "30 captioned, 0 failed" in done.stdout
    assert not _live(dep), "the local worker must stop (and forget its row) when the job ends"


def _live(dep: Deployment) -> list[str]:
    from vicap_jobs.services.workers import live_workers

    return live_workers(db=dep.db, within_s=5)
