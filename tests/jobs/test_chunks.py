"""Chunk transitions (``vicap_jobs.jobs.chunks``) on SQLite and PostgreSQL, and ``partition`` for any input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from tests import store_helpers as jobs
from tests.store_helpers import ago, error, naive, ok
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, JobChunk
from vicap_jobs.errors import InputError
from vicap_jobs.jobs import chunks
from vicap_jobs.jobs.chunks import ChunkOutcome, error_reason, partition

# --------------------------------------------------------------------------- partition


def test_partition_splits_in_order_with_a_shorter_last_part() -> None:
    assert partition([5, 3, 9, 1, 7], 2) == [[5, 3], [9, 1], [7]]
    assert partition([5, 3, 9, 1], 2) == [[5, 3], [9, 1]]
    assert partition([5, 3], 5) == [[5, 3]]
    assert partition([], 3) == []
    assert partition(range(3), 1) == [[0], [1], [2]]


@pytest.mark.parametrize("size", [0, -1])
def test_partition_refuses_a_size_below_one(size: int) -> None:
    with pytest.raises(InputError) as raised:
        partition([1, 2], size)
    assert str(raised.value) == "--chunk-size must be positive"


@given(image_ids=st.lists(st.integers(min_value=1, max_value=10**9)), chunk_size=st.integers(min_value=1, max_value=50))
def test_partition_puts_every_image_in_exactly_one_part_in_order(image_ids: list[int], chunk_size: int) -> None:
    parts = partition(image_ids, chunk_size)
    assert [i for part in parts for i in part] == image_ids  # each once, order kept (duplicates too)
    assert all(len(part) == chunk_size for part in parts[:-1])
    assert all(0 < len(part) <= chunk_size for part in parts)
    assert len(parts) == -(-len(image_ids) // chunk_size)


# --------------------------------------------------------------------------- create, open, enqueued


def test_create_chunks_numbers_queued_parts_from_start_seq(any_db: Engine) -> None:
    job_id = jobs.new_job(any_db, "caption", {"folder": "/p", "model": "m", "engine": "torch"})
    with session_scope(any_db) as session:
        ids = chunks.create_chunks(session=session, job_id=job_id, image_ids=[4, 2, 8, 6, 1], chunk_size=2, start_seq=7)
        assert chunks.create_chunks(session=session, job_id=job_id, image_ids=[], chunk_size=2, start_seq=20) == []
    assert ids == sorted(ids) and len(ids) == 3
    rows = [jobs.get_chunk(any_db, chunk_id) for chunk_id in ids]
    assert [(r.job_id, r.seq, r.image_ids, r.n_images, r.status, r.attempts) for r in rows] == [
        (job_id, 7, [4, 2], 2, "queued", 0),
        (job_id, 8, [8, 6], 2, "queued", 0),
        (job_id, 9, [1], 1, "queued", 0),
    ]
    other_job = jobs.new_job(any_db, "caption", {"folder": "/p", "model": "m", "engine": "torch"})
    with session_scope(any_db) as session:
        (first,) = chunks.create_chunks(session=session, job_id=other_job, image_ids=[3], chunk_size=1)
    assert jobs.get_chunk(any_db, first).seq == 0


def test_open_chunk_ids_are_the_queued_and_running_ones_in_order(any_db: Engine) -> None:
    job_id, ids = jobs.caption_job(any_db, [1, 2, 3, 4, 5], chunk_size=1)
    other_job, _ = jobs.caption_job(any_db, [6], chunk_size=1)
    for chunk_id, status in zip(ids, ("done", "running", "failed", "queued", "cancelled"), strict=True):
        jobs.set_chunk(any_db, chunk_id, status=status)
    with session_scope(any_db) as session:
        (retried,) = chunks.create_chunks(session=session, job_id=job_id, image_ids=[1], chunk_size=1, start_seq=-1)
    with session_scope(any_db) as session:
        assert chunks.open_chunk_ids(session=session, job_id=job_id) == [retried, ids[1], ids[3]]  # by seq, not id
        assert len(chunks.open_chunk_ids(session=session, job_id=other_job)) == 1


def test_mark_chunks_enqueued_records_task_ids_and_time_only(any_db: Engine) -> None:
    _, (first, second, third) = jobs.caption_job(any_db, [1, 2, 3], chunk_size=1)
    beat = ago(100)
    jobs.set_chunk(any_db, first, heartbeat_at=beat)
    with session_scope(any_db) as session:
        chunks.mark_chunks_enqueued(session=session, task_ids={first: "t-1", second: "t-2"})
    one, two, three = (jobs.get_chunk(any_db, i) for i in (first, second, third))
    assert (one.broker_task_id, two.broker_task_id, three.broker_task_id) == ("t-1", "t-2", None)
    assert naive(one.enqueued_at) > naive(ago(60)) and naive(two.enqueued_at) > naive(ago(60))
    assert three.enqueued_at is None
    assert naive(one.heartbeat_at) == naive(beat) and two.heartbeat_at is None


# --------------------------------------------------------------------------- claim, heartbeat


def test_claim_moves_a_queued_chunk_to_running_for_the_worker(any_db: Engine) -> None:
    _, (chunk_id, other) = jobs.caption_job(any_db, [1, 2], chunk_size=1)
    with session_scope(any_db) as session:
        assert session.get(JobChunk, chunk_id).status == "queued"  # already in this session's identity map
        claimed = chunks.claim_chunk(session=session, chunk_id=chunk_id, worker="gpu0@a")
        assert claimed is not None
        assert (claimed.id, claimed.status, claimed.worker_host, claimed.attempts) == (chunk_id, "running", "gpu0@a", 1)
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.status, chunk.worker_host, chunk.attempts) == ("running", "gpu0@a", 1)
    assert naive(chunk.heartbeat_at) == naive(chunk.started_at) and naive(chunk.started_at) > naive(ago(60))
    untouched = jobs.get_chunk(any_db, other)
    assert (untouched.status, untouched.attempts, untouched.worker_host) == ("queued", 0, None)


def test_claiming_a_running_chunk_again_is_a_redelivery(any_db: Engine) -> None:
    _, (chunk_id,) = jobs.caption_job(any_db, [1], chunk_size=1)
    jobs.claim_chunk(any_db, chunk_id, "a")
    claimed = jobs.claim_chunk(any_db, chunk_id, "b")
    assert claimed is not None and (claimed.status, claimed.worker_host, claimed.attempts) == ("running", "b", 2)


@pytest.mark.parametrize("status", ["done", "failed", "cancelled"])
def test_an_ended_chunk_cannot_be_claimed(any_db: Engine, status: str) -> None:
    _, (chunk_id,) = jobs.caption_job(any_db, [1], chunk_size=1)
    jobs.set_chunk(any_db, chunk_id, status=status, attempts=1)
    assert jobs.claim_chunk(any_db, chunk_id, "late") is None
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.status, chunk.attempts, chunk.worker_host, chunk.heartbeat_at) == (status, 1, None, None)


def test_beat_chunk_touches_running_chunks_only(any_db: Engine) -> None:
    _, (running, queued, other) = jobs.caption_job(any_db, [1, 2, 3], chunk_size=1)
    jobs.set_chunk(any_db, running, status="running", heartbeat_at=ago(600))
    silent = ago(600)
    jobs.set_chunk(any_db, other, status="running", heartbeat_at=silent)
    with session_scope(any_db) as session:
        chunks.beat_chunk(session=session, chunk_id=running)
        chunks.beat_chunk(session=session, chunk_id=queued)
    assert naive(jobs.get_chunk(any_db, running).heartbeat_at) > naive(ago(60))
    assert jobs.get_chunk(any_db, queued).heartbeat_at is None
    assert naive(jobs.get_chunk(any_db, other).heartbeat_at) == naive(silent)  # another worker's chunk


# --------------------------------------------------------------------------- close


def test_close_as_done_records_the_timings(any_db: Engine) -> None:
    _, (chunk_id,) = jobs.caption_job(any_db, [1], chunk_size=1)
    jobs.set_chunk(any_db, chunk_id, status="running")
    with session_scope(any_db) as session:
        outcome = ChunkOutcome("done", n_ok=1, read_s=0.25, infer_s=1.5, write_s=0.125)
        assert chunks.close_chunk(session=session, chunk_id=chunk_id, outcome=outcome) is True
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.status, chunk.read_s, chunk.infer_s, chunk.write_s) == ("done", 0.25, 1.5, 0.125)
    assert naive(chunk.finished_at) > naive(ago(60))


def test_close_as_cancelled_records_no_timings(any_db: Engine) -> None:
    _, (chunk_id,) = jobs.caption_job(any_db, [1], chunk_size=1)
    jobs.set_chunk(any_db, chunk_id, status="running")
    with session_scope(any_db) as session:
        outcome = ChunkOutcome("cancelled", read_s=0.25, infer_s=1.5, write_s=0.125)
        assert chunks.close_chunk(session=session, chunk_id=chunk_id, outcome=outcome) is True
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.status, chunk.read_s, chunk.infer_s, chunk.write_s) == ("cancelled", None, None, None)
    assert chunk.finished_at is not None


@pytest.mark.parametrize("status", ["queued", "done", "failed", "cancelled"])
def test_close_only_moves_running_chunks(any_db: Engine, status: str) -> None:
    _, (chunk_id,) = jobs.caption_job(any_db, [1], chunk_size=1)
    jobs.set_chunk(any_db, chunk_id, status=status)
    with session_scope(any_db) as session:
        assert chunks.close_chunk(session=session, chunk_id=chunk_id, outcome=ChunkOutcome("done", read_s=1.0)) is False
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.status, chunk.read_s, chunk.finished_at) == (status, None, None)


@pytest.mark.parametrize("status", ["failed", "skipped"])
def test_close_refuses_other_outcomes(any_db: Engine, status: str) -> None:
    _, (chunk_id,) = jobs.caption_job(any_db, [1], chunk_size=1)
    jobs.set_chunk(any_db, chunk_id, status="running")
    with pytest.raises(ValueError) as raised, session_scope(any_db) as session:
        chunks.close_chunk(session=session, chunk_id=chunk_id, outcome=ChunkOutcome(status))  # type: ignore[arg-type]
    assert str(raised.value) == f"a chunk closes as done or cancelled, not {status!r}"
    assert jobs.get_chunk(any_db, chunk_id).status == "running"


def test_captioned_among_finds_the_listed_images_with_a_row_for_the_job_only(any_db: Engine, tmp_path: Path) -> None:
    a, b, c, d, e = jobs.add_images(any_db, tmp_path / "img", 5)
    job_id, _ = jobs.caption_job(any_db, [a, b, c, d, e], chunk_size=5)
    other_job, _ = jobs.caption_job(any_db, [a, b, c, d, e], chunk_size=5)
    jobs.write(any_db, job_id, [ok(b), error(c), ok(e)])
    jobs.write(any_db, other_job, [ok(a), ok(d)])
    with session_scope(any_db) as session:
        found = chunks.captioned_among(session=session, job_id=job_id, image_ids=[a, b, c, d, e])
        assert found == {b, c, e}
        assert chunks.captioned_among(session=session, job_id=job_id, image_ids=[e, a, c]) == {c, e}  # any order
        assert chunks.captioned_among(session=session, job_id=job_id, image_ids=[a, d]) == set()  # b, c between
        assert chunks.captioned_among(session=session, job_id=job_id, image_ids=[]) == set()
        assert chunks.captioned_among(session=session, job_id=other_job, image_ids=[a, b]) == {a}


# --------------------------------------------------------------------------- give up


def test_give_up_writes_error_rows_for_the_uncaptioned_images_only(any_db: Engine, tmp_path: Path) -> None:
    model_id = jobs.add_model(any_db)
    a, b, c, d, e = jobs.add_images(any_db, tmp_path / "img", 5)
    job_id, (chunk_id, other_chunk) = jobs.caption_job(
        any_db, [a, b, c, d, e], chunk_size=4, model_id=model_id, engine="onnx"
    )
    jobs.set_chunk(any_db, chunk_id, status="running")
    jobs.write(any_db, job_id, [ok(a, "đã xong"), error(b, "cannot read image: truncated")])
    other_job, _ = jobs.caption_job(any_db, [c], chunk_size=1)
    jobs.write(any_db, other_job, [ok(c)])  # captioned by another job: still missing in this one
    with session_scope(any_db) as session:
        assert chunks.give_up_chunk(session=session, chunk_id=chunk_id, reason="gave up: dead") == job_id
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.status, chunk.error) == ("failed", "gave up: dead") and naive(chunk.finished_at) > naive(ago(60))
    assert jobs.captions(any_db, job_id) == {
        a: ("ok", "đã xong", None),
        b: ("error", None, "cannot read image: truncated"),
        c: ("error", None, "gave up: dead"),
        d: ("error", None, "gave up: dead"),
    }
    job = jobs.get_job(any_db, job_id)
    assert (job.done, job.failed, job.status) == (4, 3, "queued")
    assert jobs.get_chunk(any_db, other_chunk).status == "queued"
    with session_scope(any_db) as session:
        written = session.execute(
            select(Caption.engine, Caption.model_id).where(Caption.job_id == job_id, Caption.image_id == c)
        ).one()
    assert tuple(written) == ("onnx", model_id)  # the job's engine parameter


def test_give_up_records_the_default_engine_when_the_job_names_none(any_db: Engine, tmp_path: Path) -> None:
    """No engine was ever loaded for these rows; a job without one leaves the choice to the worker."""
    (a,) = jobs.add_images(any_db, tmp_path / "img", 1)
    job_id = jobs.new_job(any_db, "export", {"model": "m"})
    with session_scope(any_db) as session:
        (chunk_id,) = chunks.create_chunks(session=session, job_id=job_id, image_ids=[a], chunk_size=1)
        assert chunks.give_up_chunk(session=session, chunk_id=chunk_id, reason="r") == job_id
    with session_scope(any_db) as session:
        assert session.scalar(select(Caption.engine).where(Caption.job_id == job_id)) == "default"


@pytest.mark.parametrize("status", ["done", "failed", "cancelled"])
def test_give_up_leaves_an_ended_chunk_alone(any_db: Engine, tmp_path: Path, status: str) -> None:
    (a,) = jobs.add_images(any_db, tmp_path / "img", 1)
    job_id, (chunk_id,) = jobs.caption_job(any_db, [a], chunk_size=1)
    jobs.set_chunk(any_db, chunk_id, status=status)
    with session_scope(any_db) as session:
        assert chunks.give_up_chunk(session=session, chunk_id=chunk_id, reason="r") is None
        assert chunks.give_up_chunk(session=session, chunk_id=chunk_id + 100, reason="r") is None
    assert jobs.captions(any_db, job_id) == {}
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.status, chunk.error) == (status, None)
    assert (jobs.get_job(any_db, job_id).done, jobs.get_job(any_db, job_id).failed) == (0, 0)


# --------------------------------------------------------------------------- finish a drained job


def test_a_drained_job_with_captions_succeeds(any_db: Engine, tmp_path: Path) -> None:
    a, b = jobs.add_images(any_db, tmp_path / "img", 2)
    job_id, (first, second) = jobs.caption_job(any_db, [a, b], chunk_size=1)
    jobs.set_job(any_db, job_id, status="running")
    jobs.write(any_db, job_id, [ok(a), error(b)])
    jobs.set_chunk(any_db, first, status="done")
    jobs.set_chunk(any_db, second, status="failed")
    assert jobs.finish_if_drained(any_db, job_id) == "succeeded"
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.error) == ("succeeded", None) and naive(job.finished_at) > naive(ago(60))
    assert jobs.finish_if_drained(any_db, job_id) is None  # ended once


@pytest.mark.parametrize("open_status", ["queued", "running"])
def test_a_job_with_an_open_chunk_is_not_drained(any_db: Engine, tmp_path: Path, open_status: str) -> None:
    a, b = jobs.add_images(any_db, tmp_path / "img", 2)
    job_id, (first, second) = jobs.caption_job(any_db, [a, b], chunk_size=1)
    jobs.set_job(any_db, job_id, status="running")
    jobs.write(any_db, job_id, [ok(a)])
    jobs.set_chunk(any_db, first, status="done")
    jobs.set_chunk(any_db, second, status=open_status)
    assert jobs.finish_if_drained(any_db, job_id) is None
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.finished_at) == ("running", None)


def test_a_drained_job_without_any_caption_fails_with_the_most_common_reason(any_db: Engine, tmp_path: Path) -> None:
    a, b, c = jobs.add_images(any_db, tmp_path / "img", 3)
    job_id, (chunk_id,) = jobs.caption_job(any_db, [a, b, c], chunk_size=3)
    jobs.write(
        any_db,
        job_id,
        [error(a, "engine error: RuntimeError: x"), error(b, "empty file"), error(c, "engine error: OOM")],
    )
    jobs.set_chunk(any_db, chunk_id, status="done")
    other_job, _ = jobs.caption_job(any_db, [a, b, c], chunk_size=3)  # still open, with rows of its own
    jobs.write(any_db, other_job, [ok(a), error(b, "empty file"), error(c, "empty file")])
    assert jobs.finish_if_drained(any_db, job_id) == "failed"  # from queued too: the job is open
    assert jobs.get_job(any_db, other_job).status == "queued"
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.error) == ("failed", "all 3 images failed; most common reason: engine error")
    assert naive(job.finished_at) > naive(ago(60))


def test_a_job_cancelled_just_before_it_is_ended_stays_cancelled(any_db: Engine, tmp_path: Path) -> None:
    (a,) = jobs.add_images(any_db, tmp_path / "img", 1)
    job_id, (chunk_id,) = jobs.caption_job(any_db, [a], chunk_size=1)
    jobs.write(any_db, job_id, [ok(a)])
    jobs.set_chunk(any_db, chunk_id, status="done")

    def someone_cancels() -> None:
        jobs.set_job(any_db, job_id, status="cancelled")

    with session_scope(any_db) as session:
        fired = jobs.before_first_write(session, someone_cancels)
        assert chunks.finish_if_drained(session=session, job_id=job_id) is None
    assert fired == [True] and jobs.get_job(any_db, job_id).status == "cancelled"


def test_a_failure_count_without_error_rows_names_an_unknown_reason(any_db: Engine) -> None:
    job_id, (chunk_id,) = jobs.caption_job(any_db, [1], chunk_size=1)
    jobs.set_job(any_db, job_id, failed=1, done=1)
    jobs.set_chunk(any_db, chunk_id, status="failed")
    assert jobs.finish_if_drained(any_db, job_id) == "failed"
    assert jobs.get_job(any_db, job_id).error == "all 1 images failed; most common reason: unknown"


def test_finish_if_drained_ignores_job_unit_kinds_finished_and_missing_jobs(any_db: Engine, tmp_path: Path) -> None:
    (a,) = jobs.add_images(any_db, tmp_path / "img", 1)
    params = {"model": "m", "dataset": "d", "split": "test", "engine": "torch"}
    evaluate = jobs.new_job(any_db, "evaluate", params)
    with session_scope(any_db) as session:
        (chunk_id,) = chunks.create_chunks(session=session, job_id=evaluate, image_ids=[a], chunk_size=1)
    jobs.set_chunk(any_db, chunk_id, status="done")
    jobs.set_job(any_db, evaluate, status="running")
    assert jobs.finish_if_drained(any_db, evaluate) is None  # it ends in its own run function, after scoring
    assert jobs.get_job(any_db, evaluate).status == "running"
    cancelled, (cancelled_chunk,) = jobs.caption_job(any_db, [a], chunk_size=1)
    jobs.set_chunk(any_db, cancelled_chunk, status="cancelled")
    jobs.set_job(any_db, cancelled, status="cancelled")
    assert jobs.finish_if_drained(any_db, cancelled) is None
    assert jobs.get_job(any_db, cancelled).status == "cancelled"
    assert jobs.finish_if_drained(any_db, cancelled + 100) is None


def test_error_reason_is_the_text_before_the_first_colon() -> None:
    assert error_reason("engine error: RuntimeError: boom") == "engine error"
    assert error_reason("  cannot read image : x") == "cannot read image"
    assert error_reason("empty file") == "empty file"
    assert error_reason(None) == "unknown error"
    assert error_reason("") == "unknown error"
