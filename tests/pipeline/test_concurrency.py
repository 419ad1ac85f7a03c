"""The chunk runner beside other workers (SQLite and PostgreSQL), seen through a spy engine.

The spy (``tests/jobs/spy_engine.py``) records which images reach it (each test image has its own width), so these tests see what
row counts hide: the writer's insert-or-skip would make a runner that re-captions finished images
look correct. Each test was checked to fail with its bug planted by hand:

- a redelivered chunk re-sending captioned images (``_uncaptioned`` not skipping them);
- a job finished while another of its chunks is still running (``finish_if_drained`` counting only
  queued chunks);
- a cancel that leaves running chunks running (``cancel_job`` cancelling only queued chunks).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from tests import store_helpers as jobs
from tests.jobs.spy_engine import SpyEngine, SpyEngines, caption_of
from tests.store_helpers import error, ok
from vicap_jobs.pipeline.runner import run_chunk


def _setup(db: Engine, tmp_path: Path, n: int, chunk_size: int) -> tuple[list[int], int, list[int], SpyEngines]:
    model_id = jobs.add_model(db)
    images = jobs.add_images(db, tmp_path / "photos", n)
    job_id, chunk_ids = jobs.caption_job(db, images, chunk_size=chunk_size, batch_size=2, model_id=model_id)
    return images, job_id, chunk_ids, SpyEngines(SpyEngine(images))


def test_a_redelivered_chunk_sends_only_images_without_a_caption_row(any_db: Engine, tmp_path: Path) -> None:
    images, job_id, (chunk_id,), engines = _setup(any_db, tmp_path, 6, chunk_size=6)
    # The first delivery wrote three rows (one an error) and its worker died; the reaper requeued it.
    assert jobs.claim_chunk(any_db, chunk_id, "dead") is not None
    jobs.write(any_db, job_id, [ok(images[0]), ok(images[2]), error(images[4], "engine error: OOM")])
    other_job, _ = jobs.caption_job(any_db, [images[1]], chunk_size=1)
    jobs.write(any_db, other_job, [ok(images[1])])  # another job's caption does not count for this one
    jobs.requeue_stale_chunks(any_db, stale_after_s=0, max_attempts=5)

    outcome = run_chunk(db=any_db, chunk_id=chunk_id, engines=engines, worker_name="alive")

    assert engines.engine.batches == [[images[1], images[3]], [images[5]]]
    assert engines.asked == [(jobs.get_job(any_db, job_id).model_id, "torch")]
    assert (outcome.status, outcome.n_ok, outcome.n_failed) == ("done", 3, 0)
    rows = jobs.captions(any_db, job_id)
    assert {i: rows[i][1] for i in (images[1], images[3], images[5])} == {i: caption_of(i) for i in images[1::2]}
    assert rows[images[4]] == ("error", None, "engine error: OOM")
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.done, job.failed) == ("succeeded", 6, 1)
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.status, chunk.attempts, chunk.worker_host) == ("done", 2, "alive")


def test_a_job_stays_running_while_another_of_its_chunks_runs(any_db: Engine, tmp_path: Path) -> None:
    images, job_id, (first, second), engines = _setup(any_db, tmp_path, 4, chunk_size=2)
    assert jobs.claim_chunk(any_db, second, "other-worker") is not None  # busy elsewhere

    assert run_chunk(db=any_db, chunk_id=first, engines=engines, worker_name="w1").status == "done"

    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.done, job.finished_at) == ("running", 2, None)
    assert jobs.chunk_states(any_db, job_id) == ["done", "running"]
    assert jobs.finish_if_drained(any_db, job_id) is None

    # the other worker gets to it (here: its message redelivered to this runner) and closes it
    assert run_chunk(db=any_db, chunk_id=second, engines=engines, worker_name="other-worker").status == "done"
    assert engines.engine.batches == [images[:2], images[2:]]
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.done, job.failed) == ("succeeded", 4, 0) and job.finished_at is not None


def test_cancel_while_a_chunk_runs_cancels_every_chunk_and_stops_at_the_next_batch(
    any_db: Engine, tmp_path: Path
) -> None:
    images, job_id, (first, second), engines = _setup(any_db, tmp_path, 6, chunk_size=4)
    jobs.mark_chunk_enqueued(any_db, first, "t-first")
    jobs.mark_chunk_enqueued(any_db, second, "t-second")
    assert jobs.claim_chunk(any_db, second, "other-worker") is not None
    seen_at_cancel: dict[str, object] = {}

    def cancel_during_first_batch(n_batches: int) -> None:
        if n_batches == 1:
            seen_at_cancel["task_ids"] = sorted(jobs.cancel_job(any_db, job_id))
            seen_at_cancel["chunks"] = jobs.chunk_states(any_db, job_id)

    engines.engine.on_batch = cancel_during_first_batch
    outcome = run_chunk(db=any_db, chunk_id=first, engines=engines, worker_name="w1")

    assert seen_at_cancel == {"task_ids": ["t-first", "t-second"], "chunks": ["cancelled", "cancelled"]}
    assert engines.engine.batches == [images[:2]]  # the batch in flight finishes; the next one never starts
    assert (outcome.status, outcome.n_ok) == ("cancelled", 2)
    assert jobs.chunk_states(any_db, job_id) == ["cancelled", "cancelled"]
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.done) == ("cancelled", 2)
    # the other worker's chunk, redelivered, does nothing
    assert run_chunk(db=any_db, chunk_id=second, engines=engines, worker_name="other-worker").status == "skipped"
    assert engines.engine.batches == [images[:2]]
    assert sorted(jobs.captions(any_db, job_id)) == images[:2]
