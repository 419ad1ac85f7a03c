"""A sweep through a real Redis and two real workers: 6 runs in parallel, one worker SIGKILLed mid-training.

The killed run is requeued by the reaper of a live worker (VICAP_STALE_AFTER_S=6 in the deployment)
and trained again from scratch; every run ends succeeded and the table has one row per grid point.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.worker.conftest import Deployment, PrivateRedis
from vicap_jobs.db.tables import Job
from vicap_jobs.services.datasets import create_synth_dataset

pytestmark = [pytest.mark.slow, pytest.mark.redis]

EPOCHS = 8


def log_of(process: object) -> str:
    return Path(process.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def children(dep: Deployment, parent_id: int) -> list[Job]:
    with dep.db.connect() as connection:
        ids = connection.execute(select(Job.id).where(Job.parent_id == parent_id).order_by(Job.id)).scalars().all()
    return [dep.job(job_id) for job_id in ids]


def test_sweep_runs_on_two_workers_and_survives_a_sigkill(
    make_deployment: Callable[..., Deployment], private_redis: PrivateRedis, store_url: str
) -> None:
    """6 runs on 2 workers; the run whose worker is SIGKILLed mid-training is requeued, retrained, and the sweep succeeds."""
    dep = make_deployment(store_url, private_redis.url)
    create_synth_dataset(db=dep.db, name="s", n_images=160, seed=1, size=32, out_dir=dep.home / "synth", nightly=False)
    workers = {name: dep.start_worker("--cpu", "--name", f"{name}@test", log_name=name) for name in ("w1", "w2")}
    output = dep.cli(
        "submit", "sweep", "ws", "--family", "cnn-lstm", "--dataset", "s", "--epochs", str(EPOCHS),
        "--image-size", "32", "--batch-size", "16", "--grid", "lr=1e-2,5e-3,1e-4", "--repeats", "2",
    ).stdout  # fmt: skip
    match = re.search(r"parent job (\d+)", output)
    assert match, output
    parent_id = int(match.group(1))
    assert len(children(dep, parent_id)) == 6

    def training_midway() -> bool:
        return any(
            c.status == "running" and 1 <= c.done < EPOCHS and c.kind == "sweep-train" for c in children(dep, parent_id)
        )

    dep.wait_for(training_midway, timeout=180, what="a run halfway through training", poll_s=0.05)
    victim = next(c for c in children(dep, parent_id) if c.status == "running" and 1 <= c.done < EPOCHS)
    # jobs.worker_host is the machine's name: the worker log that received the run's message names its worker.
    assert victim.broker_task_id
    killed = next(name for name in workers if victim.broker_task_id in log_of(workers[name]))
    dep.kill_worker(workers[killed])  # mid-training, no cleanup
    assert dep.job(victim.id).status == "running"
    dep.start_worker("--cpu", "--name", "w3@test", log_name="w3")

    started = time.monotonic()
    assert dep.wait_job_finished(parent_id, timeout=420) == "succeeded", dep.worker_logs()
    runs = children(dep, parent_id)
    assert [r.status for r in runs] == ["succeeded"] * 6, dep.worker_logs()
    assert dep.job(victim.id).attempts >= 1  # requeued by the reaper after its worker went silent
    survivor = next(name for name in workers if name != killed)
    assert all("vicap.sweep_train[" in log_of(workers[name]) for name in (killed, survivor))  # both ran runs
    parent = dep.job(parent_id)
    assert (parent.done, parent.total, parent.failed) == (6, 6, 0)
    table = dep.cli("sweeps", "show", "ws").stdout
    assert sum(1 for line in table.splitlines() if "lr=" in line and "2/2" in line) == 3, table
    print(f"\nsweep recovered and finished {time.monotonic() - started:.0f}s after the kill\n{table}")
