"""Every way the chunk runner (``vicap_jobs.pipeline.runner.run_chunk``) ends a chunk, with a spy engine.

Timings, per-image errors (unreadable files, an engine that raises), a model that cannot load, ended
jobs and chunks, and parameter defaults. Real checkpoints: ``tests/pipeline/test_runner.py``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from tests import store_helpers as jobs
from tests.jobs.spy_engine import SpyEngine, SpyEngines, caption_of
from tests.store_helpers import naive, ok
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Image
from vicap_jobs.errors import WeightsMissingError
from vicap_jobs.jobs.chunks import ChunkOutcome
from vicap_jobs.pipeline import reader, runner
from vicap_jobs.pipeline.runner import run_chunk


def _setup(
    db: Engine, tmp_path: Path, n: int, *, chunk_size: int, batch_size: int = 2, engine: str = "torch"
) -> tuple[list[int], int, list[int], SpyEngines]:
    images = jobs.add_images(db, tmp_path / "photos", n)
    job_id, chunk_ids = jobs.caption_job(
        db, images, chunk_size=chunk_size, batch_size=batch_size, model_id=jobs.add_model(db), engine=engine
    )
    return images, job_id, chunk_ids, SpyEngines(SpyEngine(images), device="gpu3")


def _latencies(db: Engine, job_id: int) -> dict[int, float | None]:
    with session_scope(db) as session:
        return dict(session.execute(select(Caption.image_id, Caption.latency_ms).where(Caption.job_id == job_id)).all())


class Clock:
    """A ``time`` stand-in whose ``perf_counter`` advances one second per call, per thread; ``monotonic`` stands still.

    Per thread: the read-ahead thread decodes the next batch while the engine runs, so a shared
    counter would hand the engine's timer the reader's ticks in whatever order the threads ran.
    """

    def __init__(self) -> None:
        self.local = threading.local()

    def perf_counter(self) -> float:
        self.local.now = getattr(self.local, "now", 0.0) + 1.0
        return float(self.local.now)

    def monotonic(self) -> float:
        return 0.0  # the runner's write interval never elapses: rows are written by count and at the end


def test_the_next_batch_is_read_while_the_engine_captions_this_one(
    any_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 6, chunk_size=6)
    third_read = threading.Event()
    reads: list[str] = []
    load = reader.load_rgb

    def spy_load(path: str) -> Any:
        reads.append(Path(path).name)
        if len(reads) == 3:  # the first image of the second batch
            third_read.set()
        return load(path)

    monkeypatch.setattr(reader, "load_rgb", spy_load)
    overlapped: list[bool] = []
    engines.engine.on_batch = lambda n: overlapped.append(third_read.wait(timeout=10)) if n == 1 else None
    outcome = run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w")
    assert overlapped == [True]  # batch 2 was being read while batch 1 was in the engine
    assert (outcome.status, outcome.n_ok) == ("done", 6) and len(reads) == 6  # each file read once
    assert engines.engine.batches == [images[0:2], images[2:4], images[4:6]]  # in order


def test_a_chunk_records_its_timings_and_each_image_its_share_of_the_batch(
    any_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 4, chunk_size=4, engine="onnx")
    clock = Clock()
    monkeypatch.setattr(runner, "time", clock)
    monkeypatch.setattr(reader, "time", clock)  # reading is timed where it happens
    beats: list[int] = []
    outcome = run_chunk(
        db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w", heartbeat=lambda: beats.append(1)
    )
    # per batch: reading takes 1 tick, the engine 2 (its latency clock starts with it); one write of 1 tick
    assert outcome == ChunkOutcome("done", n_ok=4, n_failed=0, read_s=2.0, infer_s=4.0, write_s=1.0)
    assert len(beats) == 2  # the worker's heartbeat callback, after each batch
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.read_s, chunk.infer_s, chunk.write_s) == (2.0, 4.0, 1.0)
    assert naive(chunk.heartbeat_at) > naive(chunk.started_at)  # beaten with the write
    assert _latencies(any_db, job_id) == dict.fromkeys(images, 500.0)  # 1 tick shared by the 2 images of a batch
    with session_scope(any_db) as session:
        engines_used = set(session.scalars(select(Caption.engine).where(Caption.job_id == job_id)))
        model_ids = set(session.scalars(select(Caption.model_id).where(Caption.job_id == job_id)))
    job = jobs.get_job(any_db, job_id)
    assert engines.asked == [(job.model_id, "onnx")]
    assert (engines_used, model_ids) == ({"spy"}, {job.model_id})
    assert (job.status, job.device, job.done) == ("succeeded", "gpu3", 4)
    assert jobs.captions(any_db, job_id)[images[3]] == ("ok", caption_of(images[3]), None)


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of results of each ``write_results`` call the runner makes, in order."""
    sizes: list[int] = []
    real = runner.write_results

    def spy(**kwargs):  # type: ignore[no-untyped-def]
        sizes.append(len(kwargs["results"]))
        return real(**kwargs)

    monkeypatch.setattr(runner, "write_results", spy)
    return sizes


def test_rows_are_written_once_enough_are_waiting_and_at_the_end_of_the_chunk(
    any_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 5, chunk_size=5, batch_size=2)
    monkeypatch.setattr(runner, "WRITE_EVERY_ROWS", 3)
    monkeypatch.setattr(runner, "WRITE_EVERY_S", 3600.0)
    writes = _count_writes(monkeypatch)
    done_seen: list[int] = []
    engines.engine.on_batch = lambda n: done_seen.append(jobs.get_job(any_db, job_id).done)
    outcome = run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w")
    assert writes == [4, 1]  # 2 + 2 rows waiting ≥ 3: written; the last image at the end
    assert done_seen == [0, 0, 4]  # progress moves with each write, while the chunk runs
    assert (outcome.status, outcome.n_ok) == ("done", 5)
    assert set(jobs.captions(any_db, job_id)) == set(images)
    assert jobs.get_job(any_db, job_id).done == 5


def test_rows_waiting_longer_than_the_write_interval_are_written_after_their_batch(
    any_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 5, chunk_size=5, batch_size=2)
    monkeypatch.setattr(runner, "WRITE_EVERY_S", 0.0)
    writes = _count_writes(monkeypatch)
    assert run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w").n_ok == 5
    assert writes == [2, 2, 1]


def test_an_engine_that_answers_too_few_captions_fails_its_batch_not_the_chunk(any_db: Engine, tmp_path: Path) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 4, chunk_size=4)
    engines.engine.short_by = {2: 1}
    outcome = run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w")
    assert (outcome.status, outcome.n_ok, outcome.n_failed) == ("done", 2, 2)
    reason = "engine error: ValueError: the engine returned 1 captions for 2 images"
    rows = jobs.captions(any_db, job_id)
    assert (rows[images[2]], rows[images[3]]) == (("error", None, reason), ("error", None, reason))
    assert jobs.get_job(any_db, job_id).status == "succeeded"


def test_an_engine_error_fails_the_images_of_its_batch_only(any_db: Engine, tmp_path: Path) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 4, chunk_size=4)

    def fail_second(n: int) -> None:
        if n == 2:
            raise RuntimeError("CUDA out of memory")

    engines.engine.on_batch = fail_second
    outcome = run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w")
    assert (outcome.status, outcome.n_ok, outcome.n_failed) == ("done", 2, 2)
    reason = "engine error: RuntimeError: CUDA out of memory"
    assert jobs.captions(any_db, job_id) == {
        images[0]: ("ok", caption_of(images[0]), None),
        images[1]: ("ok", caption_of(images[1]), None),
        images[2]: ("error", None, reason),
        images[3]: ("error", None, reason),
    }
    assert _latencies(any_db, job_id)[images[2]] is None
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.done, job.failed) == ("succeeded", 4, 2)


def test_unreadable_files_get_their_reason_and_never_reach_the_engine(
    any_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 5, chunk_size=5)
    with session_scope(any_db) as session:
        paths = dict(session.execute(select(Image.id, Image.path)).all())
    Path(paths[images[1]]).write_bytes(b"")  # a file the decoder refuses (ImageError)
    real_load = reader.load_rgb

    def load(path: Path):  # a decoder bug (not an ImageError) on the third and fourth images
        if str(path) in (paths[images[2]], paths[images[3]]):
            raise ValueError("bad palette")
        return real_load(path)

    monkeypatch.setattr(reader, "load_rgb", load)
    outcome = run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w")
    assert engines.engine.batches == [[images[0]], [images[4]]]  # the batch of images 2, 3 never reached it
    assert (outcome.status, outcome.n_ok, outcome.n_failed) == ("done", 2, 3)
    rows = jobs.captions(any_db, job_id)
    assert rows[images[1]] == ("error", None, "empty file")
    assert rows[images[2]] == rows[images[3]] == ("error", None, "cannot read image: ValueError: bad palette")
    assert rows[images[4]] == ("ok", caption_of(images[4]), None)


def test_a_chunk_image_without_an_image_row_is_skipped(any_db: Engine, tmp_path: Path) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 2, chunk_size=2)
    jobs.set_chunk(any_db, chunk_id, image_ids=[images[0], 9999, images[1]])
    outcome = run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w")
    assert engines.engine.batches == [images]
    assert (outcome.status, outcome.n_ok) == ("done", 2)


def test_missing_engine_asks_for_the_workers_default_and_batch_size_defaults_to_8(
    any_db: Engine, tmp_path: Path
) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 9, chunk_size=9)
    jobs.set_job(any_db, job_id, params={"folder": "/photos", "model": "spy"})
    assert run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w").status == "done"
    assert engines.asked == [(jobs.get_job(any_db, job_id).model_id, None)]  # EngineCache resolves None
    assert engines.engine.batches == [images[:8], images[8:]]


# --------------------------------------------------------------------------- the model cannot load


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        (WeightsMissingError("no weights at /m"), "cannot load model: no weights at /m"),
        (OSError("disk gone"), "cannot load model: OSError: disk gone"),
    ],
)
def test_a_model_that_cannot_load_fails_the_job_and_its_chunks(
    any_db: Engine, tmp_path: Path, problem: Exception, reason: str
) -> None:
    images, job_id, (first, second), engines = _setup(any_db, tmp_path, 4, chunk_size=2)
    engines.fail = problem
    outcome = run_chunk(db=any_db, chunk_id=first, engines=engines, worker_name="w")
    assert outcome == ChunkOutcome("failed")
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.error) == ("failed", reason)
    assert jobs.chunk_states(any_db, job_id) == ["failed", "failed"]
    assert jobs.get_chunk(any_db, second).error == reason
    assert jobs.captions(any_db, job_id) == {}


def test_a_job_without_a_model_fails_without_asking_for_an_engine(any_db: Engine, tmp_path: Path) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 1, chunk_size=1)
    jobs.set_job(any_db, job_id, model_id=None)
    assert run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w") == ChunkOutcome("failed")
    assert engines.asked == []
    assert jobs.get_job(any_db, job_id).error == f"cannot load model: job {job_id} has no model"


# --------------------------------------------------------------------------- ended jobs and chunks


def test_an_ended_chunk_is_skipped_without_loading_anything(any_db: Engine, tmp_path: Path) -> None:
    _, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 1, chunk_size=1)
    jobs.set_chunk(any_db, chunk_id, status="done")
    assert run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w") == ChunkOutcome("skipped")
    assert (engines.asked, jobs.get_job(any_db, job_id).status) == ([], "queued")


def test_a_running_chunk_of_a_job_cancelled_mid_chunk_is_closed_as_cancelled(any_db: Engine, tmp_path: Path) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 4, chunk_size=4)
    engines.engine.on_batch = lambda n: jobs.set_job(any_db, job_id, status="cancelled")  # the job row only
    outcome = run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w")
    assert (outcome.status, outcome.n_ok, engines.engine.batches) == ("cancelled", 2, [images[:2]])
    assert set(jobs.captions(any_db, job_id)) == set(images[:2])  # what was captioned before the cancel is kept
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.status, chunk.read_s) == ("cancelled", None) and chunk.finished_at is not None


def test_an_open_chunk_of_a_cancelled_job_closes_as_cancelled(any_db: Engine, tmp_path: Path) -> None:
    _, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 1, chunk_size=1)
    jobs.set_job(any_db, job_id, status="cancelled")
    assert run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w") == ChunkOutcome("cancelled")
    assert (jobs.chunk_states(any_db, job_id), engines.asked) == (["cancelled"], [])
    assert jobs.get_job(any_db, job_id).status == "cancelled"


def test_an_open_chunk_of_a_succeeded_job_closes_as_done_and_is_skipped(any_db: Engine, tmp_path: Path) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 1, chunk_size=1)
    jobs.write(any_db, job_id, [ok(images[0])])
    jobs.set_job(any_db, job_id, status="succeeded")
    assert run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="w") == ChunkOutcome("skipped")
    assert (jobs.chunk_states(any_db, job_id), engines.asked) == (["done"], [])
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.started_at) == ("succeeded", None)
