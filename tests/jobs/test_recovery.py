"""Each recovery rule (``vicap_jobs.jobs.recovery``) on SQLite and PostgreSQL: what is stale, lost or drained, and what is not.

The reaper pass that publishes these plans is tested in ``tests/worker/test_reaper.py``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests import store_helpers as jobs
from tests.store_helpers import ago, naive, ok
from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.jobs import lifecycle, recovery
from vicap_jobs.jobs.chunks import ChunkOutcome, close_chunk, create_chunks
from vicap_jobs.jobs.recovery import Redelivery, StaleChunks

TRAIN = {"name": "m", "family": "cnn-lstm", "dataset": "d", "options": {}}
EVALUATE = {"model": "m", "dataset": "d", "split": "test", "engine": "torch"}
GIVE_UP = "gave up after {} attempts: the worker died or timed out each time"


def _evaluate_job(db: Engine, image_ids: list[int], chunk_size: int = 1, **values: object) -> tuple[int, list[int]]:
    job_id = jobs.new_job(db, "evaluate", EVALUATE, **values)
    with session_scope(db) as session:
        return job_id, create_chunks(session=session, job_id=job_id, image_ids=image_ids, chunk_size=chunk_size)


def test_cutoff_is_now_minus_the_staleness(monkeypatch: pytest.MonkeyPatch) -> None:
    now = utcnow()
    monkeypatch.setattr(recovery, "utcnow", lambda: now)
    assert recovery.cutoff_for(90) == now - timedelta(seconds=90)
    assert recovery.cutoff_for(0.5) == now - timedelta(seconds=0.5)


def test_redelivery_is_true_only_with_something_to_publish() -> None:
    assert not Redelivery()
    assert not Redelivery(chunks={("caption", "vicap"): []})
    assert Redelivery(chunks={("caption", "vicap"): [3]})
    assert Redelivery(jobs=[4])


# --------------------------------------------------------------------------- stale chunks


def test_silent_running_chunks_are_requeued_and_others_left_alone(any_db: Engine) -> None:
    _, (stale, fresh, queued, done, recent, older) = jobs.caption_job(any_db, [1, 2, 3, 4, 5, 6], chunk_size=1)
    jobs.set_chunk(any_db, stale, status="running", worker_host="dead", heartbeat_at=ago(100), attempts=1)
    jobs.set_chunk(any_db, older, status="running", worker_host="dead", heartbeat_at=ago(900), attempts=1)
    jobs.set_chunk(any_db, fresh, status="running", worker_host="alive", heartbeat_at=ago(1), attempts=1)
    jobs.set_chunk(any_db, queued, heartbeat_at=ago(600))
    jobs.set_chunk(any_db, done, status="done", heartbeat_at=ago(600))
    jobs.set_chunk(any_db, recent, status="running", worker_host="slow", heartbeat_at=ago(80), attempts=1)
    assert jobs.requeue_stale_chunks(any_db, stale_after_s=90, max_attempts=3) == StaleChunks([stale, older], [])
    chunk = jobs.get_chunk(any_db, stale)
    assert (chunk.status, chunk.worker_host, chunk.heartbeat_at, chunk.attempts) == ("queued", None, None, 1)
    assert [jobs.get_chunk(any_db, i).status for i in (fresh, queued, done, recent)] == [
        "running",
        "queued",
        "done",
        "running",
    ]
    assert jobs.get_chunk(any_db, recent).worker_host == "slow"


def test_a_chunk_claimed_max_attempts_times_is_given_up(any_db: Engine, tmp_path: Path) -> None:
    images = jobs.add_images(any_db, tmp_path / "img", 4)
    job_id, (at_max, below) = jobs.caption_job(any_db, images[2:] + images[:2], chunk_size=2)
    jobs.set_job(any_db, job_id, status="running")
    jobs.write(any_db, job_id, [ok(images[2])])  # half of the given-up chunk was captioned before each death
    jobs.set_chunk(any_db, below, status="running", heartbeat_at=ago(600), attempts=2)
    jobs.set_chunk(any_db, at_max, status="running", heartbeat_at=ago(600), attempts=3)
    assert jobs.requeue_stale_chunks(any_db, stale_after_s=90, max_attempts=3) == StaleChunks([below], [at_max])
    given_up = jobs.get_chunk(any_db, at_max)
    assert (given_up.status, given_up.error) == ("failed", GIVE_UP.format(3))
    assert jobs.captions(any_db, job_id) == {
        images[2]: ("ok", "một bức ảnh", None),
        images[3]: ("error", None, GIVE_UP.format(3)),
    }
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.done, job.failed) == ("running", 2, 1)  # the queued chunk is still to run
    assert jobs.get_chunk(any_db, below).status == "queued"


def test_no_stale_chunks_is_an_empty_result(any_db: Engine) -> None:
    jobs.caption_job(any_db, [1], chunk_size=1)
    assert jobs.requeue_stale_chunks(any_db, stale_after_s=90, max_attempts=3) == StaleChunks([], [])


# --------------------------------------------------------------------------- redelivery plan


def test_requeued_chunks_go_back_per_kind_and_queue_and_job_unit_chunks_as_their_job_once(any_db: Engine) -> None:
    _, (g1, g2) = jobs.caption_job(any_db, [1, 2], chunk_size=1, gpu=1)
    _, (shared,) = jobs.caption_job(any_db, [3], chunk_size=1)
    legacy, (old,) = jobs.caption_job(any_db, [4], chunk_size=1)
    jobs.set_job(any_db, legacy, queue=None)  # a row from before jobs.queue existed
    evaluate, (e1, e2) = _evaluate_job(any_db, [5, 6], gpu=0)
    with session_scope(any_db) as session:
        plan = recovery.redelivery_for_chunks(session=session, chunk_ids=[e2, g2, shared, e1, g1, old])
        empty = recovery.redelivery_for_chunks(session=session, chunk_ids=[])
    assert plan.chunks == {("caption", "gpu.1"): [g1, g2], ("caption", "vicap"): [shared, old]}
    assert plan.jobs == [evaluate]
    assert (empty.chunks, empty.jobs) == ({}, [])


# --------------------------------------------------------------------------- stale jobs


def test_silent_running_jobs_of_unit_job_are_requeued(any_db: Engine) -> None:
    db = any_db
    skipped, _ = _evaluate_job(db, [1])  # first, so the ones after it are still looked at
    stale = jobs.new_job(db, "train", TRAIN)
    never_beat = jobs.new_job(db, "export")
    fresh = jobs.new_job(db, "export")
    caption, _ = jobs.caption_job(db, [2], chunk_size=1)
    queued = jobs.new_job(db, "train", TRAIN)
    jobs.set_job(db, never_beat, created_at=ago(3600))  # older than stale: the result is in id order all the same
    jobs.set_job(db, stale, status="running", heartbeat_at=ago(100), started_at=ago(1), worker_host="dead")
    jobs.set_job(db, never_beat, status="running", heartbeat_at=None, started_at=ago(100))
    jobs.set_job(db, fresh, status="running", heartbeat_at=ago(80), started_at=ago(600))
    for job_id in (skipped, caption, queued):
        jobs.set_job(db, job_id, status="running" if job_id != queued else "queued", heartbeat_at=ago(600))
    with session_scope(db) as session:
        requeued = recovery.requeue_stale_jobs(session=session, stale_after_s=90, max_attempts=3, skip={skipped})
    assert requeued == [stale, never_beat]
    for job_id in (stale, never_beat):
        job = jobs.get_job(db, job_id)
        assert (job.status, job.attempts, job.heartbeat_at, job.error, job.finished_at) == (
            "queued",
            1,
            None,
            None,
            None,
        )
    assert {
        i: (jobs.get_job(db, i).status, jobs.get_job(db, i).attempts) for i in (fresh, skipped, caption, queued)
    } == {
        fresh: ("running", 0),
        skipped: ("running", 0),
        caption: ("running", 0),
        queued: ("queued", 0),
    }


def test_a_job_whose_worker_died_max_attempts_times_fails(any_db: Engine) -> None:
    last, again = jobs.new_job(any_db, "train", TRAIN), jobs.new_job(any_db, "train", TRAIN)
    jobs.set_job(any_db, last, status="running", heartbeat_at=ago(600), attempts=2)
    jobs.set_job(any_db, again, status="running", heartbeat_at=ago(600), attempts=1)
    with session_scope(any_db) as session:
        assert recovery.requeue_stale_jobs(session=session, stale_after_s=90, max_attempts=3, skip=set()) == [again]
    job = jobs.get_job(any_db, last)
    assert (job.status, job.attempts, job.error) == ("failed", 3, GIVE_UP.format(3))
    assert naive(job.finished_at) > naive(ago(60))
    assert (jobs.get_job(any_db, again).status, jobs.get_job(any_db, again).attempts) == ("queued", 2)


# --------------------------------------------------------------------------- lost messages


def test_queued_chunks_published_long_ago_are_candidates_per_kind_and_queue(any_db: Engine) -> None:
    db = any_db
    job_id, (old, new, never, running) = jobs.caption_job(db, [1, 2, 3, 4], chunk_size=1, gpu=2)
    jobs.set_job(db, job_id, created_at=ago(3600))
    jobs.set_chunk(db, old, enqueued_at=ago(600))
    jobs.set_chunk(db, new, enqueued_at=ago(10))  # published again recently: waits behind others
    jobs.set_chunk(db, running, status="running", enqueued_at=ago(600))
    legacy, (legacy_chunk,) = jobs.caption_job(db, [5], chunk_size=1)
    jobs.set_job(db, legacy, queue=None, status="running")
    jobs.set_chunk(db, legacy_chunk, enqueued_at=ago(600))
    ended, (ended_chunk,) = jobs.caption_job(db, [6], chunk_size=1)
    jobs.set_job(db, ended, status="failed")  # a queued chunk of an ended job is nobody's business
    jobs.set_chunk(db, ended_chunk, enqueued_at=ago(600))
    jobs.caption_job(db, [7], chunk_size=1)  # created now, never published
    evaluate, (evaluate_chunk,) = _evaluate_job(db, [8])
    jobs.set_chunk(db, evaluate_chunk, enqueued_at=ago(600))
    jobs.set_job(db, evaluate, enqueued_at=ago(10))
    with session_scope(db) as session:
        chunks, waiting_jobs = recovery.waiting_too_long(session=session, stale_after_s=90)
    assert chunks == {("caption", "gpu.2"): [old, never], ("caption", "vicap"): [legacy_chunk]}
    assert waiting_jobs == {}


def test_queued_jobs_published_long_ago_and_never_started_are_candidates_per_queue(any_db: Engine) -> None:
    db = any_db
    published = jobs.new_job(db, "train", TRAIN, gpu=1)
    jobs.set_job(db, published, enqueued_at=ago(600), created_at=ago(3600))
    republished = jobs.new_job(db, "train", TRAIN)
    jobs.set_job(db, republished, enqueued_at=ago(10), created_at=ago(3600))  # enqueued_at, not created_at, counts
    never = jobs.new_job(db, "export")
    jobs.set_job(db, never, created_at=ago(600), queue=None)
    jobs.new_job(db, "export")  # created now, never published
    started = jobs.new_job(db, "export")
    jobs.set_job(db, started, status="running", created_at=ago(600))
    evaluate_started, (first, _) = _evaluate_job(db, [1, 2])
    jobs.set_job(db, evaluate_started, created_at=ago(600))
    jobs.set_chunk(db, first, status="done")  # its run began: the reaper's stale-job rule covers it
    evaluate_fresh, _ = _evaluate_job(db, [3, 4])
    jobs.set_job(db, evaluate_fresh, created_at=ago(1200))  # older than never: the result is in id order all the same
    caption, (caption_chunk,) = jobs.caption_job(db, [5], chunk_size=1)
    jobs.set_job(db, caption, created_at=ago(600))
    jobs.set_chunk(db, caption_chunk, status="running")
    waiting_caption, (waiting_chunk,) = jobs.caption_job(db, [6], chunk_size=1)
    jobs.set_job(db, waiting_caption, created_at=ago(600))  # its chunks are the messages, not the job
    with session_scope(db) as session:
        chunks, waiting_jobs = recovery.waiting_too_long(session=session, stale_after_s=90)
    assert waiting_jobs == {"gpu.1": [published], "vicap": [never, evaluate_fresh]}
    assert chunks == {("caption", "vicap"): [waiting_chunk]}


def test_exactly_stale_after_s_is_not_stale_yet(any_db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    now = utcnow()
    monkeypatch.setattr(recovery, "utcnow", lambda: now)
    edge, past = now - timedelta(seconds=90), now - timedelta(seconds=90, microseconds=1)
    _, (edge_run, past_run, edge_wait, past_wait) = jobs.caption_job(any_db, [1, 2, 3, 4], chunk_size=1)
    for chunk_id, beat in ((edge_run, edge), (past_run, past)):
        jobs.set_chunk(any_db, chunk_id, status="running", heartbeat_at=beat, attempts=1)
    for chunk_id, published in ((edge_wait, edge), (past_wait, past)):
        jobs.set_chunk(any_db, chunk_id, enqueued_at=published)
    edge_job, past_job = jobs.new_job(any_db), jobs.new_job(any_db)
    edge_lost, past_lost = jobs.new_job(any_db), jobs.new_job(any_db)
    jobs.set_job(any_db, edge_job, status="running", heartbeat_at=edge)
    jobs.set_job(any_db, past_job, status="running", heartbeat_at=past)
    jobs.set_job(any_db, edge_lost, enqueued_at=edge)
    jobs.set_job(any_db, past_lost, enqueued_at=past)
    with session_scope(any_db) as session:
        waiting_chunks, waiting_jobs = recovery.waiting_too_long(session=session, stale_after_s=90)
        stale = recovery.requeue_stale_chunks(session=session, stale_after_s=90, max_attempts=3)
        requeued = recovery.requeue_stale_jobs(session=session, stale_after_s=90, max_attempts=3)
    assert (waiting_chunks, waiting_jobs) == ({("caption", "vicap"): [past_wait]}, {"vicap": [past_lost]})
    assert (stale, requeued) == (StaleChunks([past_run], []), [past_job])


# --------------------------------------------------------------------------- drained jobs


def test_drained_jobs_are_open_chunk_unit_jobs_with_chunks_none_open(any_db: Engine) -> None:
    db = any_db
    drained, (a, b) = jobs.caption_job(db, [1, 2], chunk_size=1)
    jobs.set_job(db, drained, status="running")
    jobs.set_chunk(db, a, status="done")
    jobs.set_chunk(db, b, status="failed")
    queued_drained, (c,) = jobs.caption_job(db, [3], chunk_size=1)
    jobs.set_chunk(db, c, status="cancelled")
    busy, (d, _) = jobs.caption_job(db, [4, 5], chunk_size=1)
    jobs.set_job(db, busy, status="running")
    jobs.set_chunk(db, d, status="done")
    running_chunk, (e,) = jobs.caption_job(db, [6], chunk_size=1)
    jobs.set_chunk(db, e, status="running")
    jobs.new_job(db, "caption", {"folder": "/p", "model": "m", "engine": "torch"})  # no chunks
    ended, (f,) = jobs.caption_job(db, [7], chunk_size=1)
    jobs.set_job(db, ended, status="succeeded")
    jobs.set_chunk(db, f, status="done")
    evaluate, (g,) = _evaluate_job(db, [8])
    jobs.set_job(db, evaluate, status="running")
    jobs.set_chunk(db, g, status="done")
    with session_scope(db) as session:
        assert recovery.drained_job_ids(session=session) == [drained, queued_drained]


# --------------------------------------------------------------------------- races with a live worker


@pytest.mark.parametrize("attempts", [0, 2])  # requeued, or failed at max_attempts = 3
def test_a_job_its_worker_finishes_while_the_reaper_looks_stays_finished(any_db: Engine, attempts: int) -> None:
    job_id, dead = jobs.new_job(any_db, "train", TRAIN), jobs.new_job(any_db, "export")
    jobs.set_job(any_db, job_id, status="running", heartbeat_at=ago(600), attempts=attempts)
    jobs.set_job(any_db, dead, status="running", heartbeat_at=ago(600))

    def worker_finishes() -> None:
        with session_scope(any_db) as other:
            assert lifecycle.succeed_job(session=other, job_id=job_id, message="trained") is True

    with session_scope(any_db) as session:
        fired = jobs.before_first_write(session, worker_finishes)
        requeued = recovery.requeue_stale_jobs(session=session, stale_after_s=90, max_attempts=3)
    assert fired == [True] and requeued == [dead]  # the next stale job is still handled
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.attempts, job.error, job.progress_message) == ("succeeded", attempts, None, "trained")


@pytest.mark.parametrize("attempts", [1, 3])  # requeued, or given up at max_attempts = 3
def test_a_chunk_its_worker_closes_while_the_reaper_looks_stays_done(
    any_db: Engine, tmp_path: Path, attempts: int
) -> None:
    images = jobs.add_images(any_db, tmp_path / "img", 2)
    job_id, (chunk_id,) = jobs.caption_job(any_db, images, chunk_size=2)
    jobs.set_chunk(any_db, chunk_id, status="running", heartbeat_at=ago(600), attempts=attempts)

    def worker_closes() -> None:
        jobs.write(any_db, job_id, [ok(images[0]), ok(images[1])])
        with session_scope(any_db) as other:
            assert close_chunk(session=other, chunk_id=chunk_id, outcome=ChunkOutcome("done", n_ok=2)) is True

    with session_scope(any_db) as session:
        fired = jobs.before_first_write(session, worker_closes)
        stale = recovery.requeue_stale_chunks(session=session, stale_after_s=90, max_attempts=3)
    assert fired == [True] and stale == StaleChunks([], [])
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.status, chunk.error) == ("done", None)
    assert {i: row[0] for i, row in jobs.captions(any_db, job_id).items()} == {images[0]: "ok", images[1]: "ok"}
    job = jobs.get_job(any_db, job_id)
    assert (job.done, job.failed) == (2, 0)
