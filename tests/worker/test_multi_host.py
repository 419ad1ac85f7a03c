"""Several hosts that share no disk, simulated on one machine: the issue's must-show run.

Redis, PostgreSQL and SeaweedFS (a real S3 server). Host A (its own VICAP_HOME) trains a model with
VICAP_ARTIFACTS_URL set, so the checkpoint is uploaded with its digests; its local folder is then
moved away, so no other host could read it by path even on this machine. Hosts B and C (two more
VICAP_HOMEs, empty) each run a worker; a caption job over ``s3://…/photos/`` (a few hundred
synthetic photos plus hostile objects) is submitted. Mid-job, worker B is SIGKILLed (its chunk is
requeued by C's reaper) and SeaweedFS is killed and restarted (reads retry with backoff; chunks
that still cannot read go back to the queue and are published again). The job must succeed with
every good photo captioned exactly once, each hostile object recorded with its reason, and each
worker host having downloaded the model exactly once (``cache/artifacts/downloads.jsonl``).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from tests.conftest import use_s3_env
from tests.data.hostile import make_hostile_folder
from tests.seaweed import SECRET_KEY, SeaweedS3
from tests.worker.conftest import Deployment, PrivateRedis
from vicap_jobs.db.tables import Caption, Image, JobChunk
from vicap_jobs.services.datasets import create_synth_dataset
from vicap_jobs.storage.objects import write_bytes

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

N_PHOTOS = 240


def downloads(home: Path) -> list[dict[str, object]]:
    log = home / "cache" / "artifacts" / "downloads.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def upload_photos(bucket: str, folder: Path) -> tuple[list[str], dict[str, str]]:
    """N_PHOTOS synthetic JPEGs and the hostile files as objects; returns (good URLs, hostile URL → reason)."""
    rng = np.random.default_rng(7)
    good = []
    for i in range(N_PHOTOS):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        path = folder / f"photo_{i:04d}.jpg"
        folder.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(pixels).save(path, quality=80)
        url = f"{bucket}/photos/{'day2/' if i % 3 == 0 else ''}{path.name}"
        write_bytes(url, path.read_bytes())
        good.append(url)
    expected = make_hostile_folder(folder / "hostile")
    hostile = {}
    for key, outcome in expected.items():
        local = folder / "hostile" / key
        if outcome == "ok" or not local.is_file():
            continue
        url = f"{bucket}/photos/hostile/{key}"
        write_bytes(url, local.read_bytes())
        hostile[url] = outcome
    return good, hostile


def test_two_empty_hosts_caption_s3_photos_with_a_model_from_a_third_through_a_kill_and_a_storage_restart(
    make_deployment: Callable[..., Deployment],
    private_redis: PrivateRedis,
    postgres_url: str,
    make_seaweed: Callable[[Path], SeaweedS3],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = make_seaweed(tmp_path / "seaweed")
    use_s3_env(monkeypatch, storage)
    artifacts = f"s3://{storage.new_bucket('artifacts')}/models"
    bucket = f"s3://{storage.new_bucket('archive')}"
    good, hostile = upload_photos(bucket, tmp_path / "made")
    shared_env = {
        **storage.env(),
        "VICAP_ARTIFACTS_URL": artifacts,
        "VICAP_STORAGE_RETRIES": "3",  # 0.5 + 1 s of pauses per attempt: the outage (~10 s) outlasts several
        "AWS_MAX_ATTEMPTS": "1",
        "VICAP_MAX_CHUNK_ATTEMPTS": "12",
    }
    host_a = make_deployment(postgres_url, private_redis.url, **shared_env)
    create_synth_dataset(
        db=host_a.db, name="s", n_images=60, seed=1, size=32, out_dir=host_a.home / "synth", nightly=False
    )
    host_a.cli(
        "train",
        "s3-model",
        "--family",
        "cnn-lstm",
        "--dataset",
        "s",
        "--epochs",
        "1",
        "--image-size",
        "32",
        timeout=300,
    )
    model_dir = host_a.home / "models" / "s3-model"
    assert model_dir.is_dir()
    shutil.move(model_dir, tmp_path / "moved-away")  # no host can read it by path any more
    assert downloads(host_a.home) == []  # the training host seeded its cache when it uploaded

    host_b = make_deployment(postgres_url, private_redis.url, **shared_env)
    host_c = make_deployment(postgres_url, private_redis.url, **shared_env)
    worker_b = host_b.start_worker("--cpu", "--name", "b@host-b", log_name="b")
    host_c.start_worker("--cpu", "--name", "c@host-c", log_name="c")
    output = host_a.cli(
        "submit", "caption", "--dir", f"{bucket}/photos/", "--recursive", "--model", "s3-model",
        "--chunk-size", "16", "--batch-size", "8",
    ).stdout  # fmt: skip
    match = re.search(r"job (\d+)", output)
    assert match, output
    job_id = int(match.group(1))
    db = host_a.db

    def chunks_done() -> int:
        with db.connect() as connection:
            return len(
                connection.execute(
                    select(JobChunk.id).where(JobChunk.job_id == job_id, JobChunk.status == "done")
                ).all()
            )

    def b_is_captioning() -> bool:
        with db.connect() as connection:
            hosts = connection.execute(
                select(JobChunk.worker_host).where(JobChunk.job_id == job_id, JobChunk.status == "running")
            ).scalars()
            return chunks_done() >= 2 and any(host and host.startswith("b@") for host in hosts)

    host_a.wait_for(b_is_captioning, timeout=240, what="worker B in the middle of a chunk", poll_s=0.05)
    host_b.kill_worker(worker_b)  # host B loses power mid-chunk
    storage.stop()  # and the object store goes away for a while
    time.sleep(4)
    storage.start()
    assert host_a.wait_job_finished(job_id, timeout=420) == "succeeded", host_b.worker_logs() + host_c.worker_logs()

    with db.connect() as connection:
        rows = connection.execute(
            select(Image.path, Caption.status, Caption.error)
            .join(Image, Image.id == Caption.image_id)
            .where(Caption.job_id == job_id)
        ).all()
    assert len(rows) == len({path for path, _, _ in rows}) == len(good) + len(hostile)  # each object exactly once
    by_path = {path: (status, error) for path, status, error in rows}
    assert all(by_path[url] == ("ok", None) for url in good)
    for url, reason in hostile.items():
        status, error = by_path[url]
        assert status == "error" and reason in (error or ""), (url, error)
    for home in (host_b.home, host_c.home):
        assert len(downloads(home)) == 1, (home, downloads(home))  # each host fetched the model once
    released = (host_c.home / "logs" / "c.log").read_text(errors="replace").count("goes back to the queue")
    assert released >= 1  # the outage outlasted a chunk's retries: it was released, published again and finished
    print(f"\n{len(good)} photos + {len(hostile)} hostile objects; chunks sent back to the queue: {released}")
    all_text = "\n".join(
        Path(p).read_text(errors="replace") for h in (host_a, host_b, host_c) for p in (h.home / "logs").glob("*.log")
    )
    assert SECRET_KEY not in all_text  # credentials are never logged
