"""Fixtures for the web view: a store with two tiny models, a COCO-style data set, caption and evaluate jobs.

``web_store`` (module scope) -> WebStore
    A VICAP_HOME with a SQLite store holding: models ``tiny-a`` and ``tiny-b`` (random cnn-lstm
    checkpoints, different seeds, Vietnamese vocabulary), data set ``coco-mini`` (train 8 / test 6
    images with Vietnamese references), one finished evaluate job per model on its test split (so
    scores, a score history, model samples and a model comparison exist), and a finished caption
    job over ``photos/`` (5 good images, one truncated JPEG, and a file whose name is
    markup, ``XSS_NAME``). ``web_store.app()`` builds the app over it; the
    environment (VICAP_HOME) is set for the whole module.
``client`` -> TestClient over ``web_store`` (no token, no roots).

Helpers: ``make_client(settings_env)`` builds a client with extra VICAP_* variables
(e.g. ``{"VICAP_WEB_TOKEN": "s3cret"}``), ``run_caption_job(db, job_id)`` runs a caption
job's chunks in this process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.worker.conftest import build_tiny_checkpoint, import_coco_dataset, make_image_folder
from vicap_jobs.db.session import dispose_engines, session_scope
from vicap_jobs.jobs.chunks import open_chunk_ids
from vicap_jobs.pipeline.runner import run_chunk
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.services.evaluation import evaluate_model
from vicap_jobs.services.model_engines import EngineCache
from vicap_jobs.services.models import register_model
from vicap_jobs.settings import Settings, reset_settings

XSS_NAME = "<img src=x onerror=alert(1)><script>alert(2)<\\script>.jpg"
"""A file name that is markup ("/" cannot be part of a file name, so the script tag closes with a backslash)."""


@dataclass
class WebStore:
    home: Path
    db: Engine
    photos: Path
    caption_job: int
    evaluate_jobs: dict[str, int]

    def app(self, **env: Any) -> FastAPI:
        """The app over this store, with extra ``VICAP_*`` settings (read now, not from the environment)."""
        from vicap_jobs.web.app import create_app

        settings = Settings(home=self.home, database_url=str(self.db.url.render_as_string(hide_password=False)), **env)
        return create_app(settings=settings, db=self.db)


def register(db: Engine, checkpoint: Path, name: str) -> int:
    return register_model(
        db=db,
        name=name,
        family="cnn-lstm",
        backbone="tiny",
        artifact_dir=str(checkpoint),
        hyperparameters={"embed_dim": 16, "hidden_dim": 32},
        vocabulary=str(checkpoint / "vocab.json"),
        tokenization="syllable",
        image_size=32,
        dataset_id=None,
        trained_by_job_id=None,
    )


def run_caption_job(db: Engine, job_id: int) -> None:
    """Run every open chunk of a caption job here (the worker's run_chunk with an engine cache)."""
    cache = EngineCache(db=db)
    with session_scope(db) as session:
        chunk_ids = open_chunk_ids(session=session, job_id=job_id)
    for chunk_id in chunk_ids:
        run_chunk(db=db, chunk_id=chunk_id, engines=cache, worker_name="test-web")


def hostile_photos(folder: Path) -> Path:
    """Five good images, a truncated JPEG and a file named like a script tag."""
    make_image_folder(folder, 5, size=40)
    good = sorted(folder.iterdir())[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / XSS_NAME).write_bytes(good)
    return folder


@pytest.fixture(scope="module")
def web_store(tmp_path_factory: pytest.TempPathFactory, make_sqlite_db) -> Iterator[WebStore]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("web")
    home = root / "home"
    home.mkdir()
    saved = {k: v for k, v in os.environ.items() if k.startswith("VICAP_")}
    for name in saved:
        del os.environ[name]
    os.environ["VICAP_HOME"] = str(home)
    reset_settings()
    dispose_engines()
    try:
        db = make_sqlite_db(root / "store")
        import_coco_dataset(db, root / "coco")
        for seed, name in enumerate(("tiny-a", "tiny-b")):
            register(db, build_tiny_checkpoint(root / name, seed=seed), name)
        evaluations: dict[str, int] = {}
        for name in ("tiny-a", "tiny-b"):
            job_id = evaluate_model(db=db, model=name, dataset="coco-mini", split="test", engine_name="torch").job_id
            assert job_id is not None
            evaluations[name] = job_id
        photos = hostile_photos(root / "photos")
        plan = create_caption_job(
            db=db, folder=photos, model="tiny-a", engine_name="torch", recursive=False, batch_size=4, chunk_size=4
        )
        run_caption_job(db, plan.job_id)
        yield WebStore(home=home, db=db, photos=photos, caption_job=plan.job_id, evaluate_jobs=evaluations)
    finally:
        dispose_engines()
        for name in [k for k in os.environ if k.startswith("VICAP_")]:
            del os.environ[name]
        os.environ.update(saved)
        reset_settings()


@pytest.fixture()
def client(web_store: WebStore) -> Iterator[TestClient]:
    with TestClient(web_store.app()) as test_client:
        yield test_client
