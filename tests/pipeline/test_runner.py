"""The chunk runner in-process (no Celery): idempotence, per-image errors, counters, cancel, retry; SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from tests import store_helpers as jobs
from tests.data.hostile import make_hostile_folder
from tests.export.tiny_models import save_tiny
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Image, Job, JobChunk
from vicap_jobs.errors import InputError
from vicap_jobs.pipeline.runner import run_chunk
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.services.model_engines import EngineCache
from vicap_jobs.services.models import register_model


def _register_tiny(db: Engine, tmp_path: Path, family: str = "cnn-lstm-attn") -> str:
    checkpoint = save_tiny(tmp_path / "ckpt", family, long=True)  # never an empty caption
    register_model(
        db=db,
        name="tiny",
        family=family,
        backbone="tiny",
        artifact_dir=str(checkpoint),
        hyperparameters={},
        vocabulary=None,
        tokenization="syllable",
        image_size=32,
        dataset_id=None,
        trained_by_job_id=None,
    )
    return "tiny"


def _good_folder(root: Path, n: int) -> Path:
    from PIL import Image as PILImage

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        PILImage.new("RGB", (40 + i, 30), (10 * i % 255, 100, 50)).save(root / f"img{i:03d}.JPG")
    return root


def _captions(db: Engine, job_id: int) -> list[Caption]:
    with session_scope(db) as session:
        rows = list(session.scalars(select(Caption).where(Caption.job_id == job_id)))
        session.expunge_all()
        return rows


def _run_all(db: Engine, chunk_ids: list[int], cache: EngineCache) -> None:
    for chunk_id in chunk_ids:
        run_chunk(db=db, chunk_id=chunk_id, engines=cache, worker_name="test")


def test_caption_job_writes_one_row_per_image_and_succeeds(any_db: Engine, tmp_path: Path) -> None:
    model = _register_tiny(any_db, tmp_path)
    folder = _good_folder(tmp_path / "photos", 7)
    plan = create_caption_job(
        db=any_db, folder=folder, model=model, engine_name="torch", recursive=False, batch_size=3, chunk_size=3
    )
    assert plan.n_images == 7 and len(plan.chunk_ids) == 3
    _run_all(any_db, plan.chunk_ids, EngineCache(db=any_db))
    rows = _captions(any_db, plan.job_id)
    assert len(rows) == 7 and all(r.status == "ok" and r.text for r in rows)
    job = jobs.get_job(any_db, plan.job_id)
    assert (job.status, job.done, job.failed, job.total) == ("succeeded", 7, 0, 7)
    assert job.started_at is not None and job.finished_at is not None


def test_redelivered_chunk_is_skipped_and_counts_stay_exact(any_db: Engine, tmp_path: Path) -> None:
    model = _register_tiny(any_db, tmp_path)
    folder = _good_folder(tmp_path / "photos", 4)
    plan = create_caption_job(
        db=any_db, folder=folder, model=model, engine_name="torch", recursive=False, batch_size=2, chunk_size=4
    )
    cache = EngineCache(db=any_db)
    first = run_chunk(db=any_db, chunk_id=plan.chunk_ids[0], engines=cache, worker_name="a")
    again = run_chunk(db=any_db, chunk_id=plan.chunk_ids[0], engines=cache, worker_name="b")
    assert (first.status, first.n_ok) == ("done", 4)
    assert again.status == "skipped"
    # a chunk reset to running (its worker died after writing half) re-runs only the missing images
    with session_scope(any_db) as session:
        session.query(JobChunk).filter(JobChunk.id == plan.chunk_ids[0]).update({"status": "running"})
        session.query(Job).filter(Job.id == plan.job_id).update({"status": "running"})
        first_caption = session.scalar(
            select(Caption).where(Caption.job_id == plan.job_id).order_by(Caption.id).limit(1)
        )
        session.delete(first_caption)
        session.query(Job).filter(Job.id == plan.job_id).update({"done": 3})
    rerun = run_chunk(db=any_db, chunk_id=plan.chunk_ids[0], engines=cache, worker_name="c")
    assert (rerun.status, rerun.n_ok) == ("done", 1)
    job = jobs.get_job(any_db, plan.job_id)
    assert (job.done, job.status) == (4, "succeeded")
    assert len(_captions(any_db, plan.job_id)) == 4


def test_hostile_folder_records_readable_reasons(any_db: Engine, tmp_path: Path) -> None:
    model = _register_tiny(any_db, tmp_path)
    expected = make_hostile_folder(tmp_path / "hostile")
    plan = create_caption_job(
        db=any_db,
        folder=tmp_path / "hostile",
        model=model,
        engine_name="torch",
        recursive=True,
        batch_size=4,
        chunk_size=5,
    )
    _run_all(any_db, plan.chunk_ids, EngineCache(db=any_db))
    with session_scope(any_db) as session:
        by_name = {
            Path(path).relative_to((tmp_path / "hostile").resolve()).as_posix(): (status, error)
            for path, status, error in session.execute(
                select(Image.path, Caption.status, Caption.error)
                .join(Caption, Caption.image_id == Image.id)
                .where(Caption.job_id == plan.job_id)
            )
        }
    assert set(by_name) == set(expected)
    for name, outcome in expected.items():
        status, error = by_name[name]
        if outcome == "ok":
            assert status == "ok", (name, error)
        else:
            assert status == "error" and outcome in error and "Traceback" not in error, (name, error)
    job = jobs.get_job(any_db, plan.job_id)
    assert job.status == "succeeded" and job.failed == sum(1 for o in expected.values() if o != "ok")
    summary = jobs.job_summary(any_db, plan.job_id)
    assert sum(count for _, count in summary.errors_by_reason) == job.failed


def test_cancel_stops_remaining_chunks(any_db: Engine, tmp_path: Path) -> None:
    model = _register_tiny(any_db, tmp_path)
    folder = _good_folder(tmp_path / "photos", 6)
    plan = create_caption_job(
        db=any_db, folder=folder, model=model, engine_name="torch", recursive=False, batch_size=2, chunk_size=2
    )
    cache = EngineCache(db=any_db)
    run_chunk(db=any_db, chunk_id=plan.chunk_ids[0], engines=cache, worker_name="a")
    jobs.mark_chunk_enqueued(any_db, plan.chunk_ids[1], "t-1")
    assert jobs.cancel_job(any_db, plan.job_id) == ["t-1"]
    assert run_chunk(db=any_db, chunk_id=plan.chunk_ids[2], engines=cache, worker_name="a").status == "skipped"
    job = jobs.get_job(any_db, plan.job_id)
    assert job.status == "cancelled" and len(_captions(any_db, plan.job_id)) == 2
    with pytest.raises(InputError, match="already cancelled"):
        jobs.cancel_job(any_db, plan.job_id)


def test_retry_requeues_only_failed_images(any_db: Engine, tmp_path: Path) -> None:
    model = _register_tiny(any_db, tmp_path)
    folder = _good_folder(tmp_path / "photos", 3)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    plan = create_caption_job(
        db=any_db, folder=folder, model=model, engine_name="torch", recursive=False, batch_size=4, chunk_size=4
    )
    cache = EngineCache(db=any_db)
    _run_all(any_db, plan.chunk_ids, cache)
    assert jobs.get_job(any_db, plan.job_id).failed == 1
    (folder / "broken.jpg").unlink()
    _good_folder(tmp_path / "fixed", 1)
    (tmp_path / "fixed" / "img000.JPG").rename(folder / "broken.jpg")  # the file is repaired
    new_chunks = jobs.retry_job(any_db, plan.job_id)
    assert len(new_chunks) == 1
    _run_all(any_db, new_chunks, cache)
    job = jobs.get_job(any_db, plan.job_id)
    assert (job.status, job.done, job.failed) == ("succeeded", 4, 0)
    assert all(r.status == "ok" for r in _captions(any_db, plan.job_id))


def test_all_images_failing_fails_the_job_with_the_reason(any_db: Engine, tmp_path: Path) -> None:
    model = _register_tiny(any_db, tmp_path)
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(2):
        (folder / f"x{i}.png").write_bytes(b"")
    plan = create_caption_job(
        db=any_db, folder=folder, model=model, engine_name="torch", recursive=False, batch_size=4, chunk_size=4
    )
    _run_all(any_db, plan.chunk_ids, EngineCache(db=any_db))
    job = jobs.get_job(any_db, plan.job_id)
    assert job.status == "failed" and "empty file" in job.error


def test_a_broken_model_fails_the_job_not_each_image(any_db: Engine, tmp_path: Path) -> None:
    model = _register_tiny(any_db, tmp_path)
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"garbage")
    plan = create_caption_job(
        db=any_db,
        folder=_good_folder(tmp_path / "p", 2),
        model=model,
        engine_name="torch",
        recursive=False,
        batch_size=2,
        chunk_size=2,
    )
    outcome = run_chunk(db=any_db, chunk_id=plan.chunk_ids[0], engines=EngineCache(db=any_db), worker_name="a")
    job = jobs.get_job(any_db, plan.job_id)
    assert outcome.status == "failed" and job.status == "failed" and "cannot load model" in job.error
    with session_scope(any_db) as session:
        assert session.scalar(select(func.count()).select_from(Caption)) == 0


def test_folder_images_are_registered_once(sqlite_db: Engine, tmp_path: Path) -> None:
    model = _register_tiny(sqlite_db, tmp_path)
    folder = _good_folder(tmp_path / "photos", 3)
    for _ in range(2):
        create_caption_job(
            db=sqlite_db, folder=folder, model=model, engine_name="torch", recursive=False, batch_size=2, chunk_size=2
        )
    with session_scope(sqlite_db) as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 3
        assert all(len(sha) == 64 for sha in session.scalars(select(Image.sha256)))


def test_empty_folder_and_unknown_engine_are_user_errors(sqlite_db: Engine, tmp_path: Path) -> None:
    from vicap_jobs.errors import UnknownNameError

    model = _register_tiny(sqlite_db, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        create_caption_job(
            db=sqlite_db,
            folder=tmp_path / "empty",
            model=model,
            engine_name=None,
            recursive=False,
            batch_size=2,
            chunk_size=2,
        )
    with pytest.raises(UnknownNameError, match="onnx"):
        create_caption_job(
            db=sqlite_db,
            folder=_good_folder(tmp_path / "p", 1),
            model=model,
            engine_name="tensorrt",
            recursive=False,
            batch_size=2,
            chunk_size=2,
        )
    with pytest.raises(InputError, match="export onnx"):
        create_caption_job(
            db=sqlite_db,
            folder=tmp_path / "p",
            model=model,
            engine_name="onnx",
            recursive=False,
            batch_size=2,
            chunk_size=2,
        )


def test_a_chunk_whose_worker_keeps_dying_is_given_up_with_a_reason(any_db: Engine, tmp_path: Path) -> None:
    model = _register_tiny(any_db, tmp_path)
    plan = create_caption_job(
        db=any_db,
        folder=_good_folder(tmp_path / "p", 3),
        model=model,
        engine_name="torch",
        recursive=False,
        batch_size=3,
        chunk_size=3,
    )
    chunk_id = plan.chunk_ids[0]
    for attempt in range(1, 3):  # a worker claims it and dies; the reaper finds it stale
        assert jobs.claim_chunk(any_db, chunk_id, f"w{attempt}") is not None
        stale = jobs.requeue_stale_chunks(any_db, stale_after_s=0, max_attempts=2)
        assert stale.requeued == ([chunk_id] if attempt < 2 else [])
        assert stale.given_up == ([] if attempt < 2 else [chunk_id])
    jobs.finish_if_drained(any_db, plan.job_id)
    job = jobs.get_job(any_db, plan.job_id)
    assert job.status == "failed" and "gave up after 2 attempts" in job.error
    rows = _captions(any_db, plan.job_id)
    assert len(rows) == 3 and all(r.status == "error" and "gave up" in r.error for r in rows)
