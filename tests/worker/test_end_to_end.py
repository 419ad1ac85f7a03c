"""The whole product through the queue, with a real worker process, on Redis and on the embedded broker:

synthetic data set → ``submit train`` (tiny backbone) → ``submit export`` →
``submit caption --dir`` (ONNX engine) → ``submit evaluate`` → ``scores``
shows the model above the blind baseline.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.worker.conftest import Deployment
from vicap_jobs.services.workers import live_workers

pytestmark = pytest.mark.slow

DATASET = "e2e-synth"
MODEL = "e2e-lstm"


def job_id_of(output: str) -> int:
    match = re.search(r"job (\d+) queued", output)
    assert match, output
    return int(match.group(1))


@pytest.mark.parametrize("broker", [pytest.param("redis", marks=pytest.mark.redis), "embedded"])
def test_synth_train_export_caption_evaluate_beats_the_blind_baseline(
    broker: str, make_deployment, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    broker_url = request.getfixturevalue("private_redis").url if broker == "redis" else None
    dep: Deployment = make_deployment(None, broker_url)
    dep.cli("dataset", "synth", DATASET, "--images", "400", "--size", "48", "--seed", "0")
    dep.start_worker("--cpu")
    dep.wait_for(lambda: bool(live_workers(db=dep.db, within_s=5)), timeout=60, what="the worker's heartbeat")

    train = dep.cli(
        "submit", "train", MODEL, "--family", "cnn-lstm", "--backbone", "tiny", "--dataset", DATASET,
        "--image-size", "48", "--epochs", "8", "--random-init", "--seed", "0", "--wait",
        timeout=600,
    )  # fmt: skip
    assert f"job {job_id_of(train.stdout)} succeeded" in train.stdout, dep.worker_logs()

    exported = dep.cli("submit", "export", MODEL, "--wait", timeout=300)
    assert "succeeded" in exported.stdout, exported.stdout + dep.worker_logs()

    test_images = dep.home / "datasets" / DATASET / "images" / "test"
    n_test = sum(1 for _ in test_images.iterdir())
    captioned = dep.cli("submit", "caption", "--dir", str(test_images), "--model", MODEL, "--engine", "onnx", "--wait")
    assert f"{n_test} captioned, 0 failed" in captioned.stdout, captioned.stdout
    job = dep.job(job_id_of(captioned.stdout))
    assert job.params["engine"] == "onnx" and job.status == "succeeded"

    evaluated = dep.cli("submit", "evaluate", "--model", MODEL, "--dataset", DATASET, "--split", "test", "--wait")
    assert "succeeded" in evaluated.stdout, evaluated.stdout + dep.worker_logs()

    from vicap_jobs.services.scores import latest_scores

    rows = [r for r in latest_scores(db=dep.db, dataset=DATASET) if r.model == MODEL]
    assert len(rows) == 1 and rows[0].beats_baseline, rows
    shown = dep.cli("scores", "--dataset", DATASET).stdout
    assert MODEL in shown and "yes" in shown, shown
    assert "no worker is running" not in train.stderr + evaluated.stderr  # the started worker did the work


@pytest.mark.redis
def test_tiny_blip_through_the_queue_trains_captions_in_int8_and_is_scored(
    make_deployment, tmp_path: Path, private_redis
) -> None:
    """``submit train`` a tiny BLIP → ``submit caption --dir --engine int8`` → ``submit evaluate`` → ``scores``."""
    from tests.models.hf.tiny_hf import tiny_blip

    dep: Deployment = make_deployment(None, private_redis.url)
    dep.cli("dataset", "synth", DATASET, "--images", "120", "--size", "32", "--seed", "0")
    base = tiny_blip(tmp_path / "blip-base")
    dep.start_worker("--cpu")
    dep.wait_for(lambda: bool(live_workers(db=dep.db, within_s=5)), timeout=60, what="the worker's heartbeat")

    train = dep.cli(
        "submit", "train", "e2e-blip", "--family", "blip", "--base-model", str(base), "--dataset", DATASET,
        "--epochs", "4", "--lr", "3e-3", "--batch-size", "16", "--tokenizer-vocab-size", "300", "--wait",
        timeout=600,
    )  # fmt: skip
    assert f"job {job_id_of(train.stdout)} succeeded" in train.stdout, train.stdout + dep.worker_logs()

    test_images = dep.home / "datasets" / DATASET / "images" / "test"
    n_test = sum(1 for _ in test_images.iterdir())
    captioned = dep.cli(
        "submit", "caption", "--dir", str(test_images), "--model", "e2e-blip", "--engine", "int8", "--wait"
    )  # fmt: skip
    assert f"{n_test} captioned, 0 failed" in captioned.stdout, captioned.stdout + dep.worker_logs()
    assert dep.job(job_id_of(captioned.stdout)).params["engine"] == "int8"

    evaluated = dep.cli("submit", "evaluate", "--model", "e2e-blip", "--dataset", DATASET, "--split", "test", "--wait")
    assert "succeeded" in evaluated.stdout, evaluated.stdout + dep.worker_logs()
    shown = dep.cli("scores", "--dataset", DATASET).stdout
    assert "e2e-blip" in shown and "baseline" in shown.lower(), shown
