"""Scale: caption jobs of 1k, 10k and 100k small images through Redis + 2 workers + PostgreSQL; cost per image must stay flat.

One PostgreSQL database (``bench_scale``, created and dropped here), one private
``redis-server``, two ``vicap-jobs worker --cpu`` processes (concurrency 1, one
torch thread each) and one tiny cnn-lstm (tiny backbone, 64 px, torch engine)
whose end-of-caption logit is raised so every caption ends at once: the
engine costs ~0.8 ms an image and the store, the broker and the chunk
bookkeeping are what is measured. The workers are warmed up (model loaded)
before the first size; the sizes run in increasing order on the same store,
so the later jobs also see the earlier rows.

Per size: ``submit_s`` (walk + register the images + create the chunks, what
``caption`` does before it publishes), ``publish_s``, ``run_s`` (first publish
to the job's ``finished_at``), images/s and caption rows/s, ``cost_per_image_ms``
((submit + publish + run) / images) and ``cost_per_engine_ms`` (the same wall
time per millisecond of engine work in that run, which cancels a busy spell on a
shared machine) with their ratios to the smallest size's, the chunks' own
read/infer/write seconds, the per-chunk overhead and the gaps between a worker's
chunks in the first and last quarter of the job, one reaper pass halfway, the
worker RSS (max, first vs last quarter) and Redis ``used_memory`` sampled every
0.5 s. The caption writer is also measured alone on the same PostgreSQL, with
ordinary commits and with the runner's (target ≥ 20,000 rows/s at chunk size).

Measured on 2 shared cores (AMD EPYC), 1k / 10k / 100k images: submit 0.16 / 1.2 /
13.6 s (it was 0.96 / 13.6 / 142 s with a flush and a query per file); cost per
engine ms 1.0 / 0.96 / 0.94 of the 1k run's (1.0 / 1.10 / 1.23 before: row-by-row
caption writes and a per-chunk lookup that scanned the whole job); chunk overhead
85 ms in the first quarter of the 100k job, 65 ms in the last (130 → 480 ms
before); the writer alone 25,600 rows/s at 256 rows a transaction, 36,700 at
1,000 (530 / 810 before, one INSERT per row).

The machine may be shared: compare the ratios within one run, not the seconds
across runs. Writes ``bench/results/scale.json``.

    python bench/scale.py                        # 1k, 10k, 100k (~5 min on 2 cores)
    python bench/scale.py --sizes 1000,10000     # a quick run
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
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    make_tiny_model,
    postgres_database,
    private_redis,
    rss_mb,
    write_result,
    write_tiny_jpegs,
)

TARGET_WRITER_ROWS_PER_S = 20_000
#: Flat: cost per image (in engine units) at every size ≤ this × the smallest size's. Before the
#: fixes the 100,000-image job measured 1.23 here (a lookup that scanned the whole job per chunk).
TARGET_FLAT_RATIO = 1.10
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
WORKERS = 2
SAMPLE_EVERY_S = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated image counts, run in this order")
    parser.add_argument("--image-size", type=int, default=64, help="model input side (tiny backbone)")
    parser.add_argument("--source-size", type=int, default=48, help="side of the generated JPEG files")
    parser.add_argument("--batch-size", type=int, default=16, help="engine batch (one write per batch)")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument(
        "--writer-rows", type=int, default=20_000, help="rows per batch size in the writer-alone test (0: skip it)"
    )
    parser.add_argument("--writer-batches", default="16,256,1000", help="batch sizes of the writer-alone test")
    parser.add_argument("--writer-repeats", type=int, default=3, help="runs per batch size (the median is kept)")
    parser.add_argument("--postgres-admin-url", default=os.environ.get("VICAP_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL))
    parser.add_argument("--database", default="bench_scale", help="created, used and dropped")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder, removed at the end")
    parser.add_argument(
        "--images-dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where each size's images are written and removed (default: /dev/shm, where removing 100,000 files "
        "takes a second, not minutes; else the work folder)",
    )
    parser.add_argument("--result-name", default="scale")
    return parser.parse_args(argv)


def parse_sizes(text: str) -> list[int]:
    """``"1000,10000"`` → [1000, 10000]; every size positive."""
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or any(size <= 0 for size in sizes):
        raise SystemExit(f"--sizes needs positive image counts, got {text!r}")
    return sizes


# -- the pure part: what the JSON says about each size ------------------------------------------------


def cost_per_image(run: dict[str, Any]) -> float:
    """Milliseconds of wall time per image, from the start of submit to the job's end."""
    return 1000 * (run["submit_s"] + run["publish_s"] + run["run_s"]) / run["images"]


def cost_per_engine_ms(run: dict[str, Any]) -> float:
    """Worker-milliseconds of wall time per millisecond the engine spent on an image.

    The same measure as ``cost_per_image`` in units of the engine's own speed in that run, so a
    busy spell on a shared machine that slows everything alike cancels out; what is left grows
    only with costs outside the engine (submit, bookkeeping, broker, store).
    """
    return WORKERS * (run["submit_s"] + run["publish_s"] + run["run_s"]) / run["chunk_infer_s"]


def quarters(samples: Sequence[float]) -> tuple[float | None, float | None]:
    """(max of the first quarter, max of the last quarter) of a series of samples; None when empty."""
    if not samples:
        return None, None
    quarter = max(1, len(samples) // 4)
    return max(samples[:quarter]), max(samples[-quarter:])


def summarize_sizes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-size cost per image, raw and in engine units, with their ratios to the first (smallest) size.

    Flat: the engine-unit ratio stays ≤ TARGET_FLAT_RATIO at every size (the raw ratio also moves
    with the load other programs put on the machine during each size; both are reported).
    """
    if not runs:
        return {"sizes": [], "flat": None}
    base, base_units = cost_per_image(runs[0]), cost_per_engine_ms(runs[0])
    sizes = []
    for run in runs:
        cost, units = cost_per_image(run), cost_per_engine_ms(run)
        sizes.append(
            {
                **run,
                "cost_per_image_ms": round(cost, 4),
                "cost_ratio_to_first": round(cost / base, 3),
                "engine_ms_per_image": round(1000 * run["chunk_infer_s"] / run["images"], 4),
                "cost_per_engine_ms": round(units, 4),
                "cost_per_engine_ms_ratio_to_first": round(units / base_units, 3),
            }
        )
    worst = max(size["cost_per_engine_ms_ratio_to_first"] for size in sizes)
    return {
        "sizes": sizes,
        "worst_cost_ratio": max(size["cost_ratio_to_first"] for size in sizes),
        "worst_cost_per_engine_ms_ratio": worst,
        "flat": worst <= TARGET_FLAT_RATIO,
    }


@dataclass(frozen=True)
class ChunkTimes:
    """One finished chunk: its worker, start and end (epoch seconds) and the seconds of its own work."""

    worker: str
    started: float
    finished: float
    read_s: float
    infer_s: float
    write_s: float

    @property
    def work_s(self) -> float:
        return self.read_s + self.infer_s + self.write_s


def timeline(chunks: Sequence[ChunkTimes]) -> dict[str, Any]:
    """Where the time outside the chunks' own work went, early in the job and late (first vs last quarter).

    ``chunk_overhead_ms``: a chunk's wall time minus its read/infer/write (claim, queries, close);
    ``gap_ms``: from a worker's chunk end to the start of its next chunk (the broker round trip).
    Both are per chunk; if either grows from the first quarter to the last, some step costs more
    as the job (or the store) grows.
    """
    ordered = sorted(chunks, key=lambda c: c.started)
    overhead = [1000 * (c.finished - c.started - c.work_s) for c in ordered]
    gaps: list[tuple[float, float]] = []  # (when, gap ms)
    by_worker: dict[str, list[ChunkTimes]] = {}
    for chunk in ordered:
        by_worker.setdefault(chunk.worker, []).append(chunk)
    for runs in by_worker.values():
        gaps += [(b.started, 1000 * (b.started - a.finished)) for a, b in zip(runs, runs[1:], strict=False)]
    gap_ms = [gap for _, gap in sorted(gaps)]
    return {
        "read_s": round(sum(c.read_s for c in chunks), 3),
        "infer_s": round(sum(c.infer_s for c in chunks), 3),
        "write_s": round(sum(c.write_s for c in chunks), 3),
        "chunk_overhead_ms": _quarter_means(overhead),
        "gap_ms": _quarter_means(gap_ms),
    }


def _quarter_means(values: Sequence[float]) -> dict[str, float | None]:
    """Mean of the first quarter, of the last quarter and of all ``values`` (None when empty)."""
    if not values:
        return {"first_quarter": None, "last_quarter": None, "mean": None}
    quarter = max(1, len(values) // 4)
    return {
        "first_quarter": round(statistics.mean(values[:quarter]), 2),
        "last_quarter": round(statistics.mean(values[-quarter:]), 2),
        "mean": round(statistics.mean(values), 2),
    }


# -- the caption writer alone ------------------------------------------------------------------------


def writer_throughput(
    db: Any, *, rows: int, batch_sizes: Sequence[int], repeats: int = 1, wait_for_disk: bool = True
) -> dict[str, float]:
    """Median caption rows per second of ``write_results``, one transaction per batch, per batch size.

    Every run writes ``rows`` rows (a tenth of them errors) for a job of its own over the same
    images, moving the job's counters in each transaction as a worker does. ``wait_for_disk``
    False commits as the chunk runner does (``commit_without_waiting``). The batch sizes take
    turns within each repeat, so a busy spell on a shared machine hits them alike.
    """
    from sqlalchemy import insert, select

    from vicap_jobs.db.session import commit_without_waiting, session_scope
    from vicap_jobs.db.tables import Image, Job, Model
    from vicap_jobs.jobs.lifecycle import create_job
    from vicap_jobs.jobs.writer import CaptionResult, write_results

    with session_scope(db) as session:
        model_id = session.scalar(select(Model.id).order_by(Model.id).limit(1))
        first = session.scalar(select(Image.id).order_by(Image.id.desc()).limit(1)) or 0
        session.execute(
            insert(Image),
            [
                {"dataset_id": None, "path": f"/writer-bench/{first + i}.jpg", "file_name": f"{first + i}.jpg"}
                for i in range(rows)
            ],
        )
        image_ids = list(session.scalars(select(Image.id).where(Image.id > first).order_by(Image.id)))
    results = [
        CaptionResult(i, None, None, "cannot read image: broken")
        if n % 10 == 0
        else CaptionResult(i, "một cầu thủ đang đá quả bóng trên sân cỏ", 0.8, None)
        for n, i in enumerate(image_ids)
    ]
    measured: dict[str, list[float]] = {str(size): [] for size in batch_sizes}
    for _ in range(repeats):
        for batch_size in batch_sizes:
            params = {"folder": "/writer-bench", "model": "bench", "engine": "torch", "chunk_size": batch_size}
            with session_scope(db) as session:
                job_id = create_job(session=session, kind="caption", params=params, model_id=model_id, total=rows)
            started = time.perf_counter()
            for start in range(0, len(results), batch_size):
                with session_scope(db) as session:
                    if not wait_for_disk:
                        commit_without_waiting(session)
                    write_results(
                        session=session,
                        job_id=job_id,
                        model_id=model_id,
                        engine_name="torch",
                        results=results[start : start + batch_size],
                    )
            elapsed = time.perf_counter() - started
            with session_scope(db) as session:
                job = session.get(Job, job_id)
                if job is None or job.done != len(results):
                    raise RuntimeError("the writer lost rows")
            measured[str(batch_size)].append(len(results) / elapsed)
    rates = {size: round(statistics.median(values), 1) for size, values in measured.items()}
    how = "waiting for the disk" if wait_for_disk else "commits as the runner's"
    print(f"writer alone ({how}): " + ", ".join(f"{k} rows: {v:,.0f} rows/s" for k, v in rates.items()), flush=True)
    return rates


# -- the stack: store, broker, model, workers ----------------------------------------------------------


@dataclass
class Stack:
    """The store, the broker and the two running workers, for every size of one run."""

    work: Path
    database_url: str
    broker_url: str
    args: argparse.Namespace
    db: Any = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [f"scale{i}@{socket.gethostname()}" for i in range(1, WORKERS + 1)]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VICAP_")}
        env.update(
            VICAP_HOME=str(self.work / "home"),
            VICAP_DATABASE_URL=self.database_url,
            VICAP_BROKER_URL=self.broker_url,
            VICAP_TORCH_THREADS="1",
            VICAP_CHUNK_SIZE=str(self.args.chunk_size),
        )
        return env

    def prepare(self) -> None:
        """Migrate the store, register the model, point this process's publisher at the private broker."""
        from vicap_jobs.db.migrate import upgrade
        from vicap_jobs.db.session import make_engine
        from vicap_jobs.services.models import register_model
        from vicap_jobs.settings import Settings
        from vicap_jobs.worker import publish
        from vicap_jobs.worker.app import make_app

        upgrade(self.database_url)
        self.db = make_engine(self.database_url)
        checkpoint = make_tiny_model(self.work / "model", self.args.image_size, bench="scale", eos_bias=8.0)
        register_model(
            db=self.db,
            name="bench",
            family="cnn-lstm",
            backbone="tiny",
            artifact_dir=str(checkpoint),
            hyperparameters={},
            vocabulary=str(checkpoint / "vocab.json"),
            tokenization="syllable",
            image_size=self.args.image_size,
            dataset_id=None,
            trained_by_job_id=None,
        )
        settings = Settings(home=self.work / "home", database_url=self.database_url, broker_url=self.broker_url)
        publish.app = make_app(settings)  # this process publishes to the private broker

    def start_workers(self) -> None:
        from vicap_jobs.services.workers import live_workers

        log = (self.work / "workers.log").open("ab")
        for name in self.names:
            command = [sys.executable, "-m", "vicap_jobs.cli.main", "worker", "--cpu", "--name", name]
            self.workers.append(
                subprocess.Popen(
                    [*command, "--concurrency", "1", "--loglevel", "warning"],
                    env=self.env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 180
        while len(live_workers(db=self.db, within_s=60)) < WORKERS:
            if time.monotonic() > deadline or any(w.poll() is not None for w in self.workers):
                raise RuntimeError(f"the workers did not start; see {self.work / 'workers.log'}")
            time.sleep(0.2)
        time.sleep(1.0)  # let the consumers finish starting

    def stop_workers(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the main process stops its pool itself
        for process in self.workers:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self.workers.clear()


class Sampler:
    """Worker RSS (each worker with its pool child) and Redis used_memory, every 0.5 s, in a thread."""

    def __init__(self, stack: Stack) -> None:
        import redis

        self.stack = stack
        self.redis = redis.Redis.from_url(stack.broker_url)
        self.worker_rss: list[float] = []  # the larger of the two workers at each sample
        self.redis_mb: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = [rss_mb(p.pid) for p in self.stack.workers]
            if rss and min(rss) > 0:
                self.worker_rss.append(max(rss))
            with contextlib.suppress(Exception):
                self.redis_mb.append(int(self.redis.info("memory")["used_memory"]) / 2**20)
            self._stop.wait(SAMPLE_EVERY_S)


# -- one size ------------------------------------------------------------------------------------------


def run_size(stack: Stack, n: int, *, label: str = "") -> dict[str, Any]:
    """Generate ``n`` images, submit, publish and wait for a caption job over them; the figures of that run."""
    from vicap_jobs.data.folders import iter_image_files
    from vicap_jobs.services.captioning import create_caption_job
    from vicap_jobs.worker.publish import publish_job

    folder = (stack.args.images_dir or stack.work) / f"vicap-scale-{os.getpid()}-{n}{label}"
    started = time.perf_counter()
    write_tiny_jpegs(folder, n, size=stack.args.source_size, seed=n)
    generate_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        walked = sum(1 for _ in iter_image_files(folder, recursive=False))
        walk_s = time.perf_counter() - started
        load_before = os.getloadavg()[0]
        with Sampler(stack) as sampler:
            started = time.perf_counter()
            plan = create_caption_job(
                db=stack.db,
                folder=folder,
                model="bench",
                engine_name="torch",
                recursive=False,
                batch_size=stack.args.batch_size,
                chunk_size=stack.args.chunk_size,
            )
            submitted = time.perf_counter()
            published_at = time.time()
            publish_job(db=stack.db, job_id=plan.job_id)
            publish_s = time.perf_counter() - submitted
            job, reap_ms = _wait(stack, plan.job_id, n)
        finished = _aware(job.finished_at).timestamp()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if job.status != "succeeded" or job.done != n or walked != n:
        raise RuntimeError(f"job {plan.job_id} ended {job.status} with {job.done}/{n} images ({walked} walked)")
    run_s = finished - published_at
    chunks = _chunk_work(stack, plan.job_id)
    times = timeline(chunks)
    work_s = sum(c.work_s for c in chunks)
    rss_first, rss_last = quarters(sampler.worker_rss)
    return {
        "images": n,
        "chunks": len(plan.chunk_ids),
        "generate_s": round(generate_s, 2),
        "walk_s": round(walk_s, 3),
        "submit_s": round(submitted - started, 3),
        "publish_s": round(publish_s, 3),
        "run_s": round(run_s, 3),
        "end_to_end_s": round(submitted - started + publish_s + run_s, 3),
        "images_per_s": round(n / run_s, 1),
        "rows_per_s": round(job.done / run_s, 1),
        "chunk_read_s": times["read_s"],
        "chunk_infer_s": times["infer_s"],
        "chunk_write_s": times["write_s"],
        "in_chunk_rows_per_write_s": round(n / times["write_s"], 1) if times["write_s"] else None,
        # worker-seconds the two workers spent outside their chunks' read/infer/write: claims, queries,
        # closing, broker round trips and the tail where one worker waits for the other
        "outside_chunk_work_ms_per_image": round(1000 * (WORKERS * run_s - work_s) / n, 4),
        "chunk_overhead_ms": times["chunk_overhead_ms"],
        "gap_between_chunks_ms": times["gap_ms"],
        "reap_pass_ms": reap_ms,
        "worker_rss_max_mb": round(max(sampler.worker_rss), 1) if sampler.worker_rss else None,
        "worker_rss_first_quarter_max_mb": _round(rss_first),
        "worker_rss_last_quarter_max_mb": _round(rss_last),
        "redis_used_memory_max_mb": round(max(sampler.redis_mb), 2) if sampler.redis_mb else None,
        "rss_samples": len(sampler.worker_rss),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def _wait(stack: Stack, job_id: int, n: int) -> tuple[Any, float | None]:
    """Poll the job until it ends; time one reaper pass once it is about half done. (job row, reap ms)."""
    from vicap_jobs.db.session import session_scope
    from vicap_jobs.jobs.lifecycle import get_job
    from vicap_jobs.worker.reaper import reap

    reap_ms: float | None = None
    deadline = time.monotonic() + 600 + n / 20
    while True:
        with session_scope(stack.db) as session:
            job = get_job(session=session, job_id=job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job, reap_ms
        if reap_ms is None and job.done >= n // 2:
            started = time.perf_counter()
            reap(db=stack.db)
            reap_ms = round(1000 * (time.perf_counter() - started), 2)
        if any(w.poll() is not None for w in stack.workers):
            raise RuntimeError(f"a worker died; see {stack.work / 'workers.log'}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not finish in time; see {stack.work / 'workers.log'}")
        time.sleep(0.25)


def _chunk_work(stack: Stack, job_id: int) -> list[ChunkTimes]:
    from sqlalchemy import select

    from vicap_jobs.db.session import session_scope
    from vicap_jobs.db.tables import JobChunk

    columns = (JobChunk.worker_host, JobChunk.started_at, JobChunk.finished_at)
    with session_scope(stack.db) as session:
        rows = session.execute(
            select(*columns, JobChunk.read_s, JobChunk.infer_s, JobChunk.write_s).where(JobChunk.job_id == job_id)
        ).all()
    return [
        ChunkTimes(host or "", _aware(start).timestamp(), _aware(end).timestamp(), read or 0, infer or 0, write or 0)
        for host, start, end, read, infer, write in rows
    ]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- main ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def work_dir(path: Path | None) -> Iterator[Path]:
    """``path``, or a temporary folder removed afterwards (the images are removed after each size anyway)."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    folder = Path(tempfile.mkdtemp(prefix="vicap-scale-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    # SIGTERM unwinds like Ctrl-C (which a job started in the background ignores): workers, Redis, database go
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args(argv)
    sizes = parse_sizes(args.sizes)
    writer_batches = parse_sizes(args.writer_batches)
    with (
        work_dir(args.work_dir) as work,
        postgres_database(args.postgres_admin_url, args.database) as database_url,
        private_redis(work) as broker_url,
    ):
        stack = Stack(work=work, database_url=database_url, broker_url=broker_url, args=args)
        stack.prepare()
        runs: list[dict[str, Any]] = []
        try:
            stack.start_workers()
            warm = run_size(stack, WORKERS * args.chunk_size, label="-warm-up")  # both workers load the model
            print(f"warm-up: {warm['images']} images in {warm['run_s']:.1f}s", flush=True)
            for n in sizes:
                runs.append(run_size(stack, n))
                r = runs[-1]
                print(
                    f"{n:>7} images: submit {r['submit_s']:.2f}s, run {r['run_s']:.1f}s, "
                    f"{r['images_per_s']:.0f} images/s, {cost_per_image(r):.3f} ms/image "
                    f"({cost_per_engine_ms(r):.3f} per engine ms), "
                    f"worker RSS ≤ {r['worker_rss_max_mb']} MiB, Redis ≤ {r['redis_used_memory_max_mb']} MiB",
                    flush=True,
                )
        finally:
            stack.stop_workers()
        writer: dict[str, float] = {}
        writer_runner: dict[str, float] = {}
        if args.writer_rows > 0:
            writer = writer_throughput(
                stack.db, rows=args.writer_rows, batch_sizes=writer_batches, repeats=args.writer_repeats
            )
            writer_runner = writer_throughput(
                stack.db,
                rows=args.writer_rows,
                batch_sizes=writer_batches,
                repeats=args.writer_repeats,
                wait_for_disk=False,
            )
        stack.db.dispose()
    summary = summarize_sizes(runs)
    chunk_rates = [rate for size, rate in writer_runner.items() if int(size) >= 256]
    payload: dict[str, Any] = {
        "workers": WORKERS,
        "torch_threads_per_worker": 1,
        "store": "postgresql",
        "broker": "redis (private server)",
        "engine": "torch",
        "model": f"cnn-lstm, tiny backbone, {args.image_size} px, random weights, captions end at once (EOS bias)",
        "source_images": f"{args.source_size} px JPEG",
        "chunk_size": args.chunk_size,
        "batch_size": args.batch_size,
        **summary,
        "submit_s_largest": summary["sizes"][-1]["submit_s"] if summary["sizes"] else None,
        "writer_rows_per_s": writer,
        "writer_rows_per_s_runner_commit": writer_runner,
        "writer_target_rows_per_s": TARGET_WRITER_ROWS_PER_S,
        "writer_meets_target": bool(chunk_rates) and min(chunk_rates) >= TARGET_WRITER_ROWS_PER_S,
        "how_to_read": (
            "cost_per_image_ms = (submit + publish + run) / images; cost_ratio_to_first compares it with the "
            "smallest size; cost_per_engine_ms = the same wall time in worker-ms per engine-ms of that run (a "
            "busy machine slows the engine and the rest alike, so this cancels out; flat: its ratio to the "
            f"smallest size ≤ {TARGET_FLAT_RATIO} at every size); chunk_overhead_ms and gap_between_chunks_ms "
            "compare the first and last quarter of each job's chunks; writer_rows_per_s: write_results alone on PostgreSQL, "
            "one ordinary transaction per batch of that many rows (median of the repeats); "
            "writer_rows_per_s_runner_commit: the same with the chunk runner's commits, which do not wait for the "
            "disk (the chunk's close does); writer_meets_target: the latter at chunk-sized batches (≥ 256 rows)"
        ),
    }
    path = write_result(args.result_name, payload)
    raw = [s["cost_ratio_to_first"] for s in summary["sizes"]]
    units = [s["cost_per_engine_ms_ratio_to_first"] for s in summary["sizes"]]
    print(f"cost per image ratios: {raw}; in engine units: {units}; flat: {summary['flat']}; wrote {path}")


if __name__ == "__main__":
    main()
