"""The web view beside a worker writing into the same PostgreSQL store.

A background thread runs a caption job's many small chunks with the worker's ``run_chunk`` (rows
land continuously, each chunk in its own transactions) while this thread keeps asking the app for
the dashboard, the job's JSON, its gallery page and the polled fragments. Every answer must come
quickly, progress must never go backwards, and no request may leave its connection inside a
transaction (an ``idle in transaction`` backend holds locks and snapshots the worker would wait on).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests.web.conftest import register
from tests.worker.conftest import build_tiny_checkpoint, make_image_folder
from vicap_jobs.db import migrate
from vicap_jobs.db.session import make_engine, session_scope
from vicap_jobs.jobs.chunks import open_chunk_ids
from vicap_jobs.pipeline.runner import run_chunk
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.services.model_engines import EngineCache
from vicap_jobs.settings import Settings

pytestmark = pytest.mark.postgres

N_IMAGES = 60
CHUNK_SIZE = 2
ANSWER_WITHIN_S = 5.0
COUNT = re.compile(r'<span class="count">(\d+)/(\d+)</span>')


def idle_in_transaction(db: Engine) -> int:
    """Backends of this database (other than the asking one) sitting idle inside a transaction."""
    with db.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        )


class ChunkRunner(threading.Thread):
    """Runs every open chunk of a job in order, as one worker would, with a short pause between chunks."""

    def __init__(self, db: Engine, job_id: int, pause_s: float = 0.03) -> None:
        super().__init__(name="test-worker", daemon=True)
        self.db, self.job_id, self.pause_s = db, job_id, pause_s
        self.error: BaseException | None = None
        self.chunks_run = 0

    def run(self) -> None:
        try:
            cache = EngineCache(db=self.db)
            with session_scope(self.db) as session:
                chunk_ids = open_chunk_ids(session=session, job_id=self.job_id)
            for chunk_id in chunk_ids:
                run_chunk(db=self.db, chunk_id=chunk_id, engines=cache, worker_name="test-web-worker")
                self.chunks_run += 1
                time.sleep(self.pause_s)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            self.error = exc


def test_the_app_answers_while_a_worker_writes_captions(vicap_env: Path, postgres_url: str, tmp_path: Path) -> None:
    """Dashboard, job JSON, gallery and fragments answer 200 within 5 s during a run, ``done`` never decreasing."""
    migrate.upgrade(postgres_url)
    db = make_engine(postgres_url)
    try:
        register(db, build_tiny_checkpoint(tmp_path / "tiny"), "tiny-pg")
        make_image_folder(tmp_path / "photos", N_IMAGES, size=24)
        plan = create_caption_job(
            db=db,
            folder=tmp_path / "photos",
            model="tiny-pg",
            engine_name="torch",
            recursive=False,
            batch_size=1,
            chunk_size=CHUNK_SIZE,
        )
        job_id = plan.job_id
        assert len(plan.chunk_ids) == N_IMAGES // CHUNK_SIZE
        app = create_app_for(db, vicap_env, postgres_url)
        paths = [
            "/",
            f"/api/jobs/{job_id}",
            f"/jobs/{job_id}",
            f"/jobs/{job_id}?status=ok",
            "/fragments/jobs",
            f"/fragments/jobs/{job_id}/progress",
            "/api/jobs",
        ]
        seen: list[int] = []  # done, in the order the answers came
        slowest = 0.0
        with TestClient(app) as client:
            assert client.get(f"/api/jobs/{job_id}").json()["done"] == 0
            worker = ChunkRunner(db, job_id)
            worker.start()
            rounds = 0
            while worker.is_alive() or rounds < 2:
                rounds += 1
                for path in paths:
                    started = time.perf_counter()
                    response = client.get(path)
                    elapsed = time.perf_counter() - started
                    slowest = max(slowest, elapsed)
                    assert response.status_code == 200, (path, response.status_code, response.text[:300])
                    assert elapsed < ANSWER_WITHIN_S, (path, elapsed)
                    if path == f"/api/jobs/{job_id}":
                        seen.append(int(response.json()["done"]))
                    elif path == f"/fragments/jobs/{job_id}/progress":
                        found = COUNT.search(response.text)
                        assert found and int(found.group(2)) == N_IMAGES
                        seen.append(int(found.group(1)))
            worker.join(60)
            assert not worker.is_alive()
            assert worker.error is None, repr(worker.error)
            assert worker.chunks_run == N_IMAGES // CHUNK_SIZE

            final = client.get(f"/api/jobs/{job_id}").json()
            assert (final["status"], final["done"], final["failed"]) == ("succeeded", N_IMAGES, 0)
            gallery = client.get(f"/jobs/{job_id}?status=ok")
            assert gallery.text.count('class="tile ok"') == min(N_IMAGES, 48)
            assert idle_in_transaction(db) == 0
        assert seen == sorted(seen), seen  # progress never went backwards
        assert any(0 < done < N_IMAGES for done in seen), seen  # the requests really overlapped the writes
        assert idle_in_transaction(db) == 0
    finally:
        db.dispose()


def create_app_for(db: Engine, home: Path, url: str):  # type: ignore[no-untyped-def]
    """The web app over ``db`` with settings naming the same store."""
    from vicap_jobs.web.app import create_app

    return create_app(settings=Settings(home=home, database_url=url), db=db)
