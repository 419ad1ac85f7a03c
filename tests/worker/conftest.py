"""Fixtures for the job system: a tiny random model, stores (SQLite / PostgreSQL), a private Redis,
image folders, and REAL ``vicap-jobs worker`` / ``vicap-jobs submit`` processes.

Everything Celery-related runs in subprocesses configured through ``VICAP_*``
environment variables, exactly as in production; the test process only reads
and writes the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine, func, select

from vicap_jobs.db.tables import Job

REPO = Path(__file__).resolve().parents[2]
TINY_WORDS = ["một", "bức", "ảnh", "màu", "đỏ", "xanh", "con", "mèo", "chó", "trên", "bàn", "cỏ"]


# -- a tiny random model ---------------------------------------------------------------------


def build_tiny_checkpoint(out_dir: Path, *, family: str = "cnn-lstm", image_size: int = 32, seed: int = 0) -> Path:
    """A random cnn-lstm on the tiny backbone, saved as a real checkpoint (milliseconds per image on CPU)."""
    import torch

    from vicap_jobs.data.vocab import Vocabulary
    from vicap_jobs.models.checkpoint import save_checkpoint
    from vicap_jobs.models.registry import get_family

    torch.manual_seed(seed)
    spec = get_family(family)
    vocab = Vocabulary.build([TINY_WORDS], tokenization="syllable")
    config = spec.config_cls(backbone="tiny", image_size=image_size, embed_dim=16, hidden_dim=32, dropout=0.0)
    model = spec.build(config, len(vocab), backbone_weights="random").eval()
    return save_checkpoint(out_dir, model=model, family=family, codec=vocab, meta={"test": True})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model") / "tiny")


def register_tiny_model(db: Engine, checkpoint: Path, name: str = "tiny") -> int:
    from vicap_jobs.services.models import register_model

    return register_model(
        db=db,
        name=name,
        family="cnn-lstm",
        backbone="tiny",
        artifact_dir=str(checkpoint),
        hyperparameters={},
        vocabulary=str(checkpoint / "vocab.json"),
        tokenization="syllable",
        image_size=32,
        dataset_id=None,
        trained_by_job_id=None,
    )


# -- images ----------------------------------------------------------------------------------


def make_image_folder(folder: Path, n: int, *, size: int = 24, seed: int = 0) -> list[Path]:
    """``n`` small noisy PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


REFERENCE_CAPTIONS = ("một bức ảnh màu đỏ", "ảnh con mèo trên bàn", "con chó trên cỏ xanh")


def make_coco_split(folder: Path, split: str, n: int, *, first_id: int) -> Path:
    """A COCO captions file for ``n`` images (ids ``first_id``, ``first_id + 7``, ...; never the store's ids)."""
    paths = make_image_folder(folder / split, n, seed=first_id)
    images, annotations = [], []
    for i, path in enumerate(paths):
        coco_id = first_id + 7 * i
        images.append({"id": coco_id, "file_name": f"{split}/{path.name}", "width": 24, "height": 24})
        for k in range(2):
            caption = REFERENCE_CAPTIONS[(i + k) % len(REFERENCE_CAPTIONS)]
            annotations.append({"id": 10 * coco_id + k, "image_id": coco_id, "caption": caption})
    annotation_file = folder / f"captions_{split}.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations}, ensure_ascii=False))
    return annotation_file


def import_coco_dataset(db: Engine, folder: Path, name: str = "coco-mini", *, n_test: int = 6) -> dict[str, Path]:
    """A COCO-format data set with train (8 images) and test splits; returns the annotation files."""
    from vicap_jobs.services.datasets import import_split

    files = {
        "train": make_coco_split(folder, "train", 8, first_id=5000),
        "test": make_coco_split(folder, "test", n_test, first_id=9001),
    }
    for split, annotation_file in files.items():
        import_split(db=db, name=name, fmt="coco", annotations=annotation_file, images_dir=folder, split=split)
    return files


# -- stores ----------------------------------------------------------------------------------


# -- a private Redis -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A throw-away ``redis-server`` (no persistence) that a test may restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self
            time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis = PrivateRedis(tmp_path / "redis").start()
    yield redis
    redis.stop()


# -- a deployment: env + store + processes ---------------------------------------------------


@dataclass
class Deployment:
    """One VICAP_HOME + store + broker, and the worker / submit processes started against it."""

    home: Path
    database_url: str
    broker_url: str | None
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _db: Engine | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VICAP_")}
        env.update(
            VICAP_HOME=str(self.home),
            VICAP_DATABASE_URL=self.database_url,
            VICAP_HEARTBEAT_S="1",
            VICAP_STALE_AFTER_S="6",
            VICAP_TORCH_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        if self.broker_url:
            env["VICAP_BROKER_URL"] = self.broker_url
        env.update(self.extra_env)
        return env

    @property
    def db(self) -> Engine:
        if self._db is None:
            from vicap_jobs.db.migrate import upgrade
            from vicap_jobs.db.session import make_engine

            upgrade(self.database_url)
            self._db = make_engine(self.database_url)
        return self._db

    def cli(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "vicap_jobs.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"vicap-jobs {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def start_worker(self, *args: str, log_name: str | None = None) -> subprocess.Popen[bytes]:
        """``vicap-jobs worker ARGS`` in its own process group (so a test can SIGKILL all of it)."""
        log_path = self.home / "logs" / f"{log_name or 'worker-' + str(len(self.workers))}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "vicap_jobs.cli.main", "worker", *args, "--loglevel", "info"],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.home,
            )
        process.log_path = log_path  # type: ignore[attr-defined]
        self.workers.append(process)
        return process

    def kill_worker(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its pool children at once, like a machine losing power."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop_workers(self) -> None:
        for process in self.workers:
            if process.poll() is None:  # warm shutdown: SIGTERM to the main process only, it stops its pool
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.workers.clear()

    def worker_logs(self) -> str:
        return "\n".join(
            f"--- {p.log_path} ---\n{Path(p.log_path).read_text(errors='replace')[-4000:]}"  # type: ignore[attr-defined]
            for p in self.workers
            if Path(p.log_path).exists()  # type: ignore[attr-defined]
        )

    # -- store queries -------------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        from tests.store_helpers import get_job

        return get_job(self.db, job_id)

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float, what: str, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(poll_s)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.worker_logs()}")

    def wait_job_finished(self, job_id: int, timeout: float = 120) -> str:
        self.wait_for(
            lambda: self.job(job_id).status in ("succeeded", "failed", "cancelled"),
            timeout=timeout,
            what=f"job {job_id}",
        )
        return self.job(job_id).status

    def caption_counts(self, job_id: int) -> tuple[int, int, int]:
        """(caption rows, distinct images, max rows per image) of a job."""
        from vicap_jobs.db.tables import Caption

        with self.db.connect() as connection:
            rows = connection.execute(select(func.count()).where(Caption.job_id == job_id)).scalar_one()
            images = connection.execute(
                select(func.count(func.distinct(Caption.image_id))).where(Caption.job_id == job_id)
            ).scalar_one()
            per_image = (
                select(func.count().label("n")).where(Caption.job_id == job_id).group_by(Caption.image_id).subquery()
            )
            most = connection.execute(select(func.max(per_image.c.n))).scalar_one()
        return rows, images, most or 0

    def chunk_workers(self, job_id: int) -> dict[int, str | None]:
        from vicap_jobs.db.tables import JobChunk

        with self.db.connect() as connection:
            return dict(
                connection.execute(select(JobChunk.id, JobChunk.worker_host).where(JobChunk.job_id == job_id)).all()
            )

    def close(self) -> None:
        self.stop_workers()
        if self._db is not None:
            self._db.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests on SQLite (WAL, busy timeout) and on a fresh database of the local PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def make_deployment(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[Callable[..., Deployment]]:
    """A factory: ``make_deployment(database_url, broker_url)`` → Deployment with the tiny model registered."""
    made: list[Deployment] = []

    def make(database_url: str | None = None, broker_url: str | None = None, **extra_env: str) -> Deployment:
        home = tmp_path / f"home{len(made)}"
        home.mkdir()
        deployment = Deployment(
            home=home,
            database_url=database_url or f"sqlite:///{home / 'vicap.sqlite'}",
            broker_url=broker_url,
            extra_env=extra_env,
        )
        register_tiny_model(deployment.db, tiny_checkpoint)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.close()
