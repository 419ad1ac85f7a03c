"""Queue overhead: 1,000 synthetic images captioned through the queue (Redis, 1 worker) vs in-process.

Both paths caption the same files with the same engine, batch size, chunk size
and thread count, and write the same caption rows to the same kind of store:

- in-process: ``run_chunk`` for every chunk of the job, in this process, with a
  cold ``EngineCache`` (the model load is counted, as the worker's is);
- queued: ``enqueue_chunks`` to a private ``redis-server`` and one idle
  ``vicap-jobs worker --cpu`` (already started, model not loaded), timed from
  the first publish to the job's ``finished_at``.

Planning the job (walking the folder, hashing images) is identical for both
and not timed. Each path runs ``--repeats`` times, alternating; the medians
are compared. Writes ``bench/results/queue_overhead.json``. Target: queued ≤
1.10 × in-process. ``--brokers redis,sqla,filesystem`` also measures the
embedded brokers (filesystem: see the warning in ``vicap_jobs.worker.app``).

    python bench/queue_overhead.py
    python bench/queue_overhead.py --n-images 200 --repeats 1 --brokers redis,sqla
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_tiny_model, private_redis, write_result  # noqa: E402

TARGET_OVERHEAD = 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=96, help="model input side (tiny backbone)")
    parser.add_argument("--source-size", type=int, default=160, help="side of the synthetic JPEG files")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--brokers", default="redis", help="comma-separated: redis, sqla, filesystem")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep store, model and images here")
    parser.add_argument("--result-name", default="queue_overhead")
    parser.add_argument("--run-in-process", action="store_true", help=argparse.SUPPRESS)  # child mode
    return parser.parse_args(argv)


# -- set-up ---------------------------------------------------------------------------------------


def make_model(out_dir: Path, image_size: int) -> Path:
    """A randomly initialised cnn-lstm on the tiny backbone (a random model decodes max_len tokens: worst case)."""
    return make_tiny_model(out_dir, image_size, bench="queue_overhead")


def make_images(folder: Path, n: int, size: int) -> Path:
    from vicap_jobs.data.synth import generate_synth

    synth = generate_synth(folder, n_images=n, seed=0, size=size, image_format="jpg", overwrite=True)
    flat = folder / "all"
    flat.mkdir(exist_ok=True)
    for image_dir in synth.image_dirs.values():
        for path in image_dir.iterdir():
            os.link(path, flat / f"{image_dir.name}_{path.name}")
    return flat


class Setup:
    """One VICAP_HOME with a SQLite store, the model registered, and the images."""

    def __init__(self, work: Path, args: argparse.Namespace, *, create: bool = True) -> None:
        from vicap_jobs.db.session import make_engine

        self.work = work
        self.args = args
        self.home = work / "home"
        self.database_url = f"sqlite:///{self.home / 'vicap.sqlite'}"
        self.images = work / "synth" / "all"
        if not create:  # the in-process child: everything exists already
            self.db = make_engine(self.database_url)
            return
        self.home.mkdir(parents=True, exist_ok=True)
        self.images = make_images(work / "synth", args.n_images, args.source_size)
        checkpoint = make_model(work / "model", args.image_size)
        from vicap_jobs.db.migrate import upgrade
        from vicap_jobs.services.models import register_model

        upgrade(self.database_url)
        self.db = make_engine(self.database_url)
        register_model(
            db=self.db,
            name="bench",
            family="cnn-lstm",
            backbone="tiny",
            artifact_dir=str(checkpoint),
            hyperparameters={},
            vocabulary=str(checkpoint / "vocab.json"),
            tokenization="syllable",
            image_size=args.image_size,
            dataset_id=None,
            trained_by_job_id=None,
        )

    def env(self, broker_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VICAP_")}
        env.update(
            VICAP_HOME=str(self.home),
            VICAP_DATABASE_URL=self.database_url,
            VICAP_BROKER_URL=broker_url,
            VICAP_TORCH_THREADS=str(self.args.threads),
            VICAP_CHUNK_SIZE=str(self.args.chunk_size),
        )
        return env

    def plan(self):  # type: ignore[no-untyped-def]
        from vicap_jobs.services.captioning import create_caption_job

        return create_caption_job(
            db=self.db,
            folder=self.images,
            model="bench",
            engine_name="torch",
            recursive=False,
            batch_size=self.args.batch_size,
            chunk_size=self.args.chunk_size,
        )


# -- the two paths --------------------------------------------------------------------------------


def in_process(setup: Setup) -> tuple[float, int]:
    """Run :func:`run_in_process` in a fresh interpreter, as fresh as a worker's pool child."""
    command = [sys.executable, __file__, "--run-in-process", "--work-dir", str(setup.work)]
    for name in ("n_images", "image_size", "batch_size", "chunk_size", "threads"):
        command += [f"--{name.replace('_', '-')}", str(getattr(setup.args, name))]
    done = subprocess.run(command, env=setup.env("redis://unused"), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"in-process run failed:\n{done.stderr[-3000:]}")
    elapsed, job_id = done.stdout.strip().splitlines()[-1].split()
    return float(elapsed), int(job_id)


def run_in_process(args: argparse.Namespace) -> None:
    """The in-process path; the imports a worker child has done before its first task are done before the clock."""
    import torch

    from vicap_jobs.pipeline.runner import run_chunk
    from vicap_jobs.services.model_engines import EngineCache

    torch.set_num_threads(args.threads)
    setup = Setup(args.work_dir, args, create=False)
    plan = setup.plan()
    started = time.perf_counter()
    engines = EngineCache(db=setup.db, threads=args.threads)  # cold: the model load counts, as in the worker
    for chunk_id in plan.chunk_ids:
        run_chunk(db=setup.db, chunk_id=chunk_id, engines=engines, worker_name="in-process")
    elapsed = time.perf_counter() - started
    _check(setup, plan.job_id)
    print(elapsed, plan.job_id)


class Worker:
    """``vicap-jobs worker --cpu`` against ``broker_url``, restarted for every run so the model load counts."""

    def __init__(self, setup: Setup, broker_url: str) -> None:
        self.setup, self.broker_url = setup, broker_url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from vicap_jobs.services.workers import live_workers

        log = (self.setup.work / "worker.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vicap_jobs.cli.main", "worker", "--cpu", "--loglevel", "warning"],
            env=self.setup.env(self.broker_url),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not live_workers(db=self.setup.db, within_s=30):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"worker did not start; see {self.setup.work / 'worker.log'}")
            time.sleep(0.2)
        time.sleep(1.0)  # let the consumer finish starting

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the main process only: it stops its pool itself
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        from vicap_jobs.services.workers import forget_worker

        forget_worker(db=self.setup.db, name=f"cpu@{socket.gethostname()}")


def queued(setup: Setup, broker_url: str) -> tuple[float, int]:
    """Seconds from the first publish to the job's finished_at (both this machine's clock)."""
    worker = Worker(setup, broker_url)
    worker.start()
    try:
        plan = setup.plan()
        enqueue = _publisher(setup, broker_url)
        started = time.time()
        enqueue(plan.job_id)
        deadline = time.monotonic() + 60 + setup.args.n_images
        while _job(setup, plan.job_id).status not in ("succeeded", "failed", "cancelled"):
            if worker.process is not None and worker.process.poll() is not None:
                raise RuntimeError(f"the worker died; see {setup.work / 'worker.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {plan.job_id} did not finish in time; see {setup.work / 'worker.log'}")
            time.sleep(0.2)
        finished = _aware(_job(setup, plan.job_id).finished_at)
        _check(setup, plan.job_id)
        first_start = min(_aware(c.started_at) for c in _chunks(setup, plan.job_id))
        DETAILS.append(
            {
                "broker": broker_url.split(":")[0],
                "first_chunk_started_after_s": round(first_start.timestamp() - started, 3),
            }
        )
        return finished.timestamp() - started, plan.job_id
    finally:
        worker.stop()


DETAILS: list[dict[str, Any]] = []


def _aware(moment):  # type: ignore[no-untyped-def]
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _chunks(setup: Setup, job_id: int) -> list[Any]:
    from sqlalchemy import select

    from vicap_jobs.db.session import session_scope
    from vicap_jobs.db.tables import JobChunk

    with session_scope(setup.db) as session:
        return list(session.execute(select(JobChunk.started_at).where(JobChunk.job_id == job_id)).all())


def _publisher(setup: Setup, broker_url: str):  # type: ignore[no-untyped-def]
    """publish_job on an app configured for ``broker_url`` (the module app is bound at import)."""
    from vicap_jobs.settings import Settings
    from vicap_jobs.worker import publish
    from vicap_jobs.worker.app import make_app

    app = make_app(Settings(home=setup.home, database_url=setup.database_url, broker_url=broker_url))
    publish.app = app  # this benchmark process talks to one broker per run

    def enqueue(job_id: int) -> None:
        publish.publish_job(db=setup.db, job_id=job_id)

    return enqueue


def _job(setup: Setup, job_id: int) -> Any:
    from vicap_jobs.db.session import session_scope
    from vicap_jobs.jobs.lifecycle import get_job

    with session_scope(setup.db) as session:
        return get_job(session=session, job_id=job_id)


def _check(setup: Setup, job_id: int) -> None:
    job = _job(setup, job_id)
    if job.status != "succeeded" or job.done != setup.args.n_images:
        raise RuntimeError(f"job {job_id} ended {job.status} with {job.done}/{setup.args.n_images} images")


# -- main -----------------------------------------------------------------------------------------


def broker_url_for(name: str, setup: Setup, stack: contextlib.ExitStack) -> str:
    if name == "redis":
        return stack.enter_context(private_redis(setup.work))
    if name == "sqla":
        return f"sqla+sqlite:///{setup.home / f'broker-{time.monotonic_ns()}.sqlite'}"
    if name == "filesystem":
        shutil.rmtree(setup.home / "broker", ignore_errors=True)
        return "filesystem://"
    raise SystemExit(f"unknown broker {name!r}; use redis, sqla or filesystem")


def work_s(setup: Setup, job_id: int) -> float:
    """Seconds the job's chunks spent reading, in the engine and writing (what both paths share)."""
    from sqlalchemy import func, select

    from vicap_jobs.db.session import session_scope
    from vicap_jobs.db.tables import JobChunk

    with session_scope(setup.db) as session:
        total = session.scalar(
            select(func.sum(JobChunk.read_s + JobChunk.infer_s + JobChunk.write_s)).where(JobChunk.job_id == job_id)
        )
    return float(total or 0.0)


def summarize(setup: Setup, runs: list[tuple[float, int]]) -> dict[str, Any]:
    walls = [wall for wall, _ in runs]
    idles = [wall - work_s(setup, job_id) for wall, job_id in runs]
    return {
        "wall_s": [round(w, 3) for w in walls],
        "wall_median_s": round(statistics.median(walls), 3),
        "outside_chunk_work_s": [round(i, 3) for i in idles],
        "outside_chunk_work_median_s": round(statistics.median(idles), 3),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.run_in_process:
        run_in_process(args)
        return
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="queue-overhead-"))
    setup = Setup(work, args)
    in_runs: list[tuple[float, int]] = []
    queued_runs: dict[str, list[tuple[float, int]]] = {}
    with contextlib.ExitStack() as stack:
        for name in [b.strip() for b in args.brokers.split(",") if b.strip()]:
            url = broker_url_for(name, setup, stack)
            queued_runs[name] = []
            for repeat in range(args.repeats):
                if len(in_runs) < args.repeats:
                    in_runs.append(in_process(setup))
                queued_runs[name].append(queued(setup, url))
                print(
                    f"{name} run {repeat + 1}: in-process {in_runs[repeat][0]:.2f}s, "
                    f"queued {queued_runs[name][-1][0]:.2f}s",
                    flush=True,
                )
    baseline = summarize(setup, in_runs)
    results: dict[str, Any] = {}
    for name, runs in queued_runs.items():
        entry = summarize(setup, runs)
        entry["ratio"] = round(entry["wall_median_s"] / baseline["wall_median_s"], 4)
        entry["overhead"] = round(entry["ratio"] - 1, 4)
        # The engine's speed drifts with the load of a shared machine; time outside the chunks' work does not.
        extra = entry["outside_chunk_work_median_s"] - baseline["outside_chunk_work_median_s"]
        entry["queue_overhead_s"] = round(extra, 3)
        entry["queue_overhead_ratio"] = round(extra / baseline["wall_median_s"], 4)
        results[name] = entry
    payload: dict[str, Any] = {
        "images": args.n_images,
        "chunk_size": args.chunk_size,
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "engine": "torch",
        "model": f"cnn-lstm, tiny backbone, {args.image_size} px, random weights (max-length captions)",
        "store": "sqlite",
        "workers": 1,
        "in_process": baseline,
        "queued": results,
        "first_chunk_latency": DETAILS,
        "target_overhead": TARGET_OVERHEAD,
        "how_to_read": (
            "ratio = median queued wall time / median in-process wall time (includes the engine's speed drift "
            "on a shared machine); queue_overhead_ratio = extra time outside the chunks' read/infer/write work, "
            "over the in-process wall time (what the queue itself costs)"
        ),
    }
    redis = results.get("redis")
    if redis:
        payload.update(
            ratio=redis["ratio"],
            overhead=redis["overhead"],
            queue_overhead_ratio=redis["queue_overhead_ratio"],
            meets_target=redis["queue_overhead_ratio"] <= TARGET_OVERHEAD,
        )
    path = write_result(args.result_name, payload)
    print(
        f"in-process median {baseline['wall_median_s']:.2f}s; "
        + "; ".join(
            f"{k}: wall ×{v['ratio']:.3f}, queue overhead {100 * v['queue_overhead_ratio']:.1f}%"
            for k, v in results.items()
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
