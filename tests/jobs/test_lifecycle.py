"""Job transitions (``vicap_jobs.jobs.lifecycle``) on SQLite and PostgreSQL: each one, from each state it accepts or refuses."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from tests import store_helpers as jobs
from tests.store_helpers import ago, error, naive, ok
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Dataset, Job, JobChunk
from vicap_jobs.errors import InputError, NotFoundError, UnknownNameError
from vicap_jobs.jobs import lifecycle
from vicap_jobs.jobs.chunks import create_chunks
from vicap_jobs.jobs.kinds import JobKind, register_job_kind
from vicap_jobs.jobs.params import CaptionParams, ExportParams

CAPTION = {"folder": "/photos", "model": "m", "engine": "torch"}
CAPTION_STORED = {
    **CAPTION,
    "recursive": False,
    "batch_size": 16,
    "chunk_size": 256,
    "device": None,
    "skipped_dirs": 0,
    "skip_known": False,
    "reused": 0,
}
TRAIN = {"name": "m", "family": "cnn-lstm", "dataset": "d", "options": {"epochs": 2}}


def _count_jobs(db: Engine) -> int:
    with session_scope(db) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


# --------------------------------------------------------------------------- create


def test_create_job_stores_a_queued_job_with_every_parameter_validated(any_db: Engine) -> None:
    model_id = jobs.add_model(any_db)
    with session_scope(any_db) as session:
        dataset = Dataset(name="uitviic", format="coco")
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
        job_id = lifecycle.create_job(
            session=session, kind="caption", params=CAPTION, model_id=model_id, dataset_id=dataset_id, total=5, gpu=2
        )
    job = jobs.get_job(any_db, job_id)
    assert (job.kind, job.status, job.params, job.queue) == ("caption", "queued", CAPTION_STORED, "gpu.2")
    assert (job.model_id, job.dataset_id, job.parent_id, job.total, job.done, job.failed) == (
        model_id,
        dataset_id,
        None,
        5,
        0,
        0,
    )
    assert (job.attempts, job.started_at, job.finished_at, job.heartbeat_at, job.enqueued_at) == (
        0,
        None,
        None,
        None,
        None,
    )


def test_create_job_accepts_a_params_object_and_queues_unpinned_work_on_the_shared_queue(any_db: Engine) -> None:
    job_id = jobs.new_job(any_db, "caption", CaptionParams(**CAPTION))
    job = jobs.get_job(any_db, job_id)
    assert (job.params, job.queue, job.total, job.model_id) == (CAPTION_STORED, "vicap", 0, None)


def test_an_unknown_kind_is_refused_with_the_list_of_kinds(any_db: Engine) -> None:
    with pytest.raises(UnknownNameError) as raised:
        jobs.new_job(any_db, "grid")
    assert str(raised.value) == (
        "unknown job kind 'grid'; choose one of: caption, evaluate, export, sweep, sweep-train, train"
    )
    assert _count_jobs(any_db) == 0


def test_an_unknown_parameter_is_one_line_naming_it(any_db: Engine) -> None:
    with pytest.raises(InputError) as raised:
        jobs.new_job(any_db, "export", {"model": "m", "colour": "red"})
    assert str(raised.value) == "invalid export job parameter 'colour': Extra inputs are not permitted"
    with pytest.raises(InputError) as raised:
        jobs.new_job(any_db, "caption", {"folder": "/p", "model": "m", "engine": "torch", "batch_size": 0})
    assert str(raised.value) == "invalid caption job parameter 'batch_size': Input should be greater than 0"
    assert _count_jobs(any_db) == 0


def test_the_parent_must_exist_and_is_recorded(any_db: Engine) -> None:
    with pytest.raises(NotFoundError) as raised:
        jobs.new_job(any_db, parent_id=999)
    assert str(raised.value) == "no parent job with id 999"
    assert _count_jobs(any_db) == 0
    parent = jobs.new_job(any_db)
    child = jobs.new_job(any_db, parent_id=parent)
    assert jobs.get_job(any_db, child).parent_id == parent


def test_a_kind_with_a_fixed_queue_ignores_the_gpu(any_db: Engine, restore_kinds: None) -> None:
    register_job_kind(
        JobKind(
            name="fixed",
            summary="s",
            unit="job",
            task="vicap.test.fixed",
            params=ExportParams,
            run=lambda ctx: None,
            queue="cpu.only",
        )
    )
    assert jobs.get_job(any_db, jobs.new_job(any_db, "fixed", gpu=3)).queue == "cpu.only"


def test_get_job_of_a_missing_id_is_not_found(any_db: Engine) -> None:
    with pytest.raises(NotFoundError) as raised:
        jobs.get_job(any_db, 42)
    assert str(raised.value) == "no job with id 42"


# --------------------------------------------------------------------------- start, heartbeat, progress


def test_start_moves_a_queued_job_to_running_and_records_where_and_when(any_db: Engine) -> None:
    job_id, other = jobs.new_job(any_db), jobs.new_job(any_db)
    with session_scope(any_db) as session:
        assert lifecycle.start_job(session=session, job_id=job_id, worker="w1", device="gpu0") is True
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.worker_host, job.device) == ("running", "w1", "gpu0")
    assert job.started_at is not None and naive(job.heartbeat_at) == naive(job.started_at)
    untouched = jobs.get_job(any_db, other)
    assert (untouched.status, untouched.started_at, untouched.worker_host) == ("queued", None, None)


def test_start_again_is_a_redelivery_that_keeps_the_start_time(any_db: Engine) -> None:
    job_id = jobs.new_job(any_db)
    with session_scope(any_db) as session:
        lifecycle.start_job(session=session, job_id=job_id, worker="w1", device="gpu0")
    first = jobs.get_job(any_db, job_id)
    jobs.set_job(any_db, job_id, heartbeat_at=ago(600))
    with session_scope(any_db) as session:
        assert lifecycle.start_job(session=session, job_id=job_id) is True  # no device: the recorded one stays
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.worker_host, job.device) == ("running", socket.gethostname(), "gpu0")
    assert naive(job.started_at) == naive(first.started_at)
    assert naive(job.heartbeat_at) > naive(ago(60))


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_a_finished_job_is_never_moved_again_by_a_late_message(any_db: Engine, status: str) -> None:
    job_id = jobs.new_job(any_db)
    finished_at = ago(30)
    jobs.set_job(any_db, job_id, status=status, error="before", finished_at=finished_at, progress_message="p")
    with session_scope(any_db) as session:
        assert lifecycle.start_job(session=session, job_id=job_id, worker="late") is False
        assert lifecycle.succeed_job(session=session, job_id=job_id, message="late") is False
        assert lifecycle.fail_job(session=session, job_id=job_id, reason="late") is False
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.error, job.progress_message, job.worker_host) == (status, "before", "p", None)
    assert (job.started_at, job.heartbeat_at, naive(job.finished_at)) == (None, None, naive(finished_at))


def test_beat_job_records_a_sign_of_life(any_db: Engine) -> None:
    job_id = jobs.new_job(any_db)
    other = jobs.new_job(any_db)
    with session_scope(any_db) as session:
        lifecycle.beat_job(session=session, job_id=job_id)
    assert naive(jobs.get_job(any_db, job_id).heartbeat_at) > naive(ago(60))
    assert jobs.get_job(any_db, other).heartbeat_at is None


def test_report_progress_writes_only_what_it_is_given(any_db: Engine) -> None:
    job_id = jobs.new_job(any_db)
    with session_scope(any_db) as session:
        lifecycle.report_progress(session=session, job_id=job_id, done=3, total=10, message="epoch 1", device="gpu1")
    with session_scope(any_db) as session:
        lifecycle.report_progress(session=session, job_id=job_id, done=0)
        lifecycle.report_progress(session=session, job_id=job_id)
    job = jobs.get_job(any_db, job_id)
    assert (job.done, job.total, job.progress_message, job.device) == (0, 10, "epoch 1", "gpu1")


# --------------------------------------------------------------------------- succeed, fail


def test_succeed_ends_an_open_job_and_records_its_message(any_db: Engine) -> None:
    queued, running = jobs.new_job(any_db), jobs.new_job(any_db)
    jobs.set_job(any_db, running, status="running", error="a stale note", progress_message="epoch 9")
    with session_scope(any_db) as session:
        assert lifecycle.succeed_job(session=session, job_id=queued, message="BLEU-4 0.21") is True
        assert lifecycle.succeed_job(session=session, job_id=running) is True
    first, second = jobs.get_job(any_db, queued), jobs.get_job(any_db, running)
    assert (first.status, first.progress_message, first.error) == ("succeeded", "BLEU-4 0.21", None)
    assert (second.status, second.progress_message, second.error) == ("succeeded", "epoch 9", None)
    assert first.finished_at is not None and second.finished_at is not None


def test_fail_ends_an_open_job_and_fails_its_open_chunks(any_db: Engine) -> None:
    job_id, chunk_ids = jobs.caption_job(any_db, [1, 2, 3, 4, 5, 6], chunk_size=2)
    jobs.set_job(any_db, job_id, status="running")
    jobs.set_chunk(any_db, chunk_ids[0], status="done")
    jobs.set_chunk(any_db, chunk_ids[1], status="running")
    other_job, other_chunks = jobs.caption_job(any_db, [7], chunk_size=1)
    with session_scope(any_db) as session:
        assert lifecycle.fail_job(session=session, job_id=job_id, reason="cannot load model: gone") is True
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.error) == ("failed", "cannot load model: gone") and job.finished_at is not None
    assert jobs.chunk_states(any_db, job_id) == ["done", "failed", "failed"]
    done, running, queued = (jobs.get_chunk(any_db, chunk_id) for chunk_id in chunk_ids)
    assert (done.error, done.finished_at) == (None, None)
    assert running.error == queued.error == "cannot load model: gone"
    assert naive(running.finished_at) == naive(queued.finished_at) == naive(job.finished_at)
    assert jobs.get_job(any_db, other_job).status == "queued" and jobs.chunk_states(any_db, other_job) == ["queued"]
    assert jobs.get_chunk(any_db, other_chunks[0]).error is None


def test_fail_of_a_finished_job_leaves_its_chunks_alone(any_db: Engine) -> None:
    job_id, (chunk_id,) = jobs.caption_job(any_db, [1, 2], chunk_size=2)
    jobs.set_job(any_db, job_id, status="succeeded")
    with session_scope(any_db) as session:
        assert lifecycle.fail_job(session=session, job_id=job_id, reason="late") is False
    assert jobs.chunk_states(any_db, job_id) == ["queued"] and jobs.get_chunk(any_db, chunk_id).error is None


# --------------------------------------------------------------------------- cancel


def test_cancel_ends_the_job_its_open_chunks_and_open_descendants_and_returns_their_task_ids(any_db: Engine) -> None:
    db = any_db
    job_id, (queued, running, done, unpublished) = jobs.caption_job(db, [1, 2, 3, 4, 5, 6, 7, 8], chunk_size=2)
    for chunk_id, task_id in ((queued, "t-queued"), (running, "t-running"), (done, "t-done")):
        jobs.mark_chunk_enqueued(db, chunk_id, task_id)
    jobs.set_chunk(db, running, status="running")
    jobs.set_chunk(db, done, status="done")
    child = jobs.new_job(db, parent_id=job_id)
    grandchild = jobs.new_job(db, parent_id=child)
    finished_child = jobs.new_job(db, parent_id=job_id)
    stranger = jobs.new_job(db)
    _, (child_chunk, leftover, stranger_chunk) = jobs.caption_job(db, [9, 10, 11], chunk_size=1)
    jobs.set_chunk(db, child_chunk, job_id=grandchild)  # a chunk of the grandchild
    jobs.set_chunk(db, leftover, job_id=finished_child)  # an open chunk of an ended child stays as it is
    for chunk_id, task_id in ((child_chunk, "t-grandchild-chunk"), (leftover, "t-old"), (stranger_chunk, "t-x")):
        jobs.mark_chunk_enqueued(db, chunk_id, task_id)
    with session_scope(db) as session:
        for task_job, task_id in ((child, "t-child"), (grandchild, "t-grandchild"), (finished_child, "t-old")):
            lifecycle.mark_job_enqueued(session=session, job_id=task_job, task_id=task_id)
        lifecycle.mark_job_enqueued(session=session, job_id=stranger, task_id="t-stranger")
    jobs.set_job(db, finished_child, status="succeeded")
    jobs.set_job(db, child, status="running")

    task_ids = jobs.cancel_job(db, job_id)

    assert sorted(task_ids) == ["t-child", "t-grandchild", "t-grandchild-chunk", "t-queued", "t-running"]
    assert set(task_ids[:3]) == {"t-grandchild-chunk", "t-queued", "t-running"}
    assert jobs.chunk_states(db, job_id) == ["cancelled", "cancelled", "done", "cancelled"]
    assert jobs.chunk_states(db, grandchild) == ["cancelled"]
    assert [jobs.get_chunk(db, i).status for i in (leftover, stranger_chunk)] == ["queued", "queued"]
    statuses = {i: jobs.get_job(db, i).status for i in (job_id, child, grandchild, finished_child, stranger)}
    assert statuses == {
        job_id: "cancelled",
        child: "cancelled",
        grandchild: "cancelled",
        finished_child: "succeeded",
        stranger: "queued",
    }
    job = jobs.get_job(db, job_id)
    assert job.finished_at is not None and naive(jobs.get_chunk(db, unpublished).finished_at) == naive(job.finished_at)
    assert jobs.get_chunk(db, done).finished_at is None
    assert jobs.get_job(db, finished_child).finished_at is None


def test_a_child_its_worker_ends_while_the_parent_is_cancelled_stays_ended(any_db: Engine) -> None:
    parent = jobs.new_job(any_db)
    child = jobs.new_job(any_db, parent_id=parent)
    jobs.set_job(any_db, child, status="running")

    def child_succeeds() -> None:
        with session_scope(any_db) as other:
            assert lifecycle.succeed_job(session=other, job_id=child, message="exported") is True

    with session_scope(any_db) as session:
        fired = jobs.before_first_write(session, child_succeeds)
        lifecycle.cancel_job(session=session, job_id=parent)
    assert fired == [True]
    assert (jobs.get_job(any_db, parent).status, jobs.get_job(any_db, child).status) == ("cancelled", "succeeded")


def test_cancel_of_a_finished_or_missing_job_is_an_error(any_db: Engine) -> None:
    job_id = jobs.new_job(any_db)
    jobs.set_job(any_db, job_id, status="failed")
    with pytest.raises(InputError) as raised:
        jobs.cancel_job(any_db, job_id)
    assert str(raised.value) == f"job {job_id} already failed"
    with pytest.raises(NotFoundError):
        jobs.cancel_job(any_db, job_id + 1)


def test_cancel_returns_no_task_id_for_work_never_published(any_db: Engine) -> None:
    job_id, _ = jobs.caption_job(any_db, [1, 2], chunk_size=1)
    assert jobs.cancel_job(any_db, job_id) == []
    assert jobs.chunk_states(any_db, job_id) == ["cancelled", "cancelled"]


def test_child_job_ids_lists_direct_children_oldest_first(any_db: Engine) -> None:
    parent = jobs.new_job(any_db)
    first = jobs.new_job(any_db, parent_id=parent)
    jobs.new_job(any_db, parent_id=first)
    second = jobs.new_job(any_db, parent_id=parent)
    with session_scope(any_db) as session:
        assert lifecycle.child_job_ids(session=session, job_id=parent) == [first, second]


# --------------------------------------------------------------------------- retry


def _finished_caption_job(db: Engine, tmp_path: Path) -> tuple[int, list[int], list[int]]:
    """A failed caption job over images a..e in chunks [a b] [c d] [e]: a, c ok; b, d error; e never captioned."""
    images = jobs.add_images(db, tmp_path / "img", 5)
    job_id, chunk_ids = jobs.caption_job(db, images, chunk_size=2, model_id=jobs.add_model(db))
    a, b, c, d, _ = images
    jobs.write(db, job_id, [ok(a), error(b), ok(c), error(d, "engine error: boom")])
    jobs.set_job(db, job_id, status="failed", error="cannot load model", finished_at=ago(5), attempts=2, total=9)
    for chunk_id, status in zip(chunk_ids, ("done", "done", "failed"), strict=True):
        jobs.set_chunk(db, chunk_id, status=status)
    return job_id, chunk_ids, images


def test_retry_requeues_only_failed_and_missing_images_after_the_old_chunks(any_db: Engine, tmp_path: Path) -> None:
    job_id, old_chunks, (a, b, c, d, e) = _finished_caption_job(any_db, tmp_path)
    other_job, _ = jobs.caption_job(any_db, [a, b], chunk_size=2)
    jobs.write(any_db, other_job, [error(a), ok(b)])  # another job's rows count for nothing here
    jobs.set_job(any_db, other_job, status="failed", error="its own reason")  # ended the same way: not reopened
    new_chunks = jobs.retry_job(any_db, job_id)  # the job's own chunk size: 2
    assert len(new_chunks) == 2 and not set(new_chunks) & set(old_chunks)
    parts = [jobs.get_chunk(any_db, chunk_id) for chunk_id in new_chunks]
    assert [(p.seq, p.image_ids, p.n_images, p.status, p.attempts) for p in parts] == [
        (3, [b, d], 2, "queued", 0),
        (4, [e], 1, "queued", 0),
    ]
    assert jobs.chunk_states(any_db, job_id) == ["done", "done", "failed", "queued", "queued"]
    assert {i: row[0] for i, row in jobs.captions(any_db, job_id).items()} == {a: "ok", c: "ok"}
    assert {i: row[0] for i, row in jobs.captions(any_db, other_job).items()} == {a: "error", b: "ok"}
    assert (jobs.get_job(any_db, other_job).status, jobs.get_job(any_db, other_job).error) == (
        "failed",
        "its own reason",
    )
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.done, job.failed, job.total, job.error, job.finished_at, job.attempts) == (
        "queued",
        2,
        0,
        5,
        None,
        None,
        0,
    )


def test_two_retries_at_once_reopen_the_job_once(any_db: Engine, tmp_path: Path) -> None:
    """The second retry read the job finished too; its reopen finds it queued and changes nothing."""
    job_id, _, (a, _, c, _, _) = _finished_caption_job(any_db, tmp_path)
    first: list[int] = []

    def another_retry() -> None:
        first.extend(jobs.retry_job(any_db, job_id))

    with pytest.raises(InputError, match="changed while it was being retried"), session_scope(any_db) as session:
        fired = jobs.before_first_write(session, another_retry)
        lifecycle.retry_job(session=session, job_id=job_id)
    assert fired == [True] and len(first) == 2
    assert jobs.chunk_states(any_db, job_id) == ["done", "done", "failed", "queued", "queued"]  # no third copy
    assert {i: row[0] for i, row in jobs.captions(any_db, job_id).items()} == {a: "ok", c: "ok"}
    assert jobs.get_job(any_db, job_id).status == "queued"


def test_retry_with_an_explicit_chunk_size(any_db: Engine, tmp_path: Path) -> None:
    job_id, _, (_, b, _, d, e) = _finished_caption_job(any_db, tmp_path)
    with session_scope(any_db) as session:
        (chunk_id,) = lifecycle.retry_job(session=session, job_id=job_id, chunk_size=3)
    assert jobs.get_chunk(any_db, chunk_id).image_ids == [b, d, e]


def test_retry_numbers_after_a_single_first_chunk_and_counts_repeated_images_once(
    any_db: Engine, tmp_path: Path
) -> None:
    images = jobs.add_images(any_db, tmp_path / "img", 3)
    job_id, (first,) = jobs.caption_job(any_db, images, chunk_size=3)
    jobs.set_chunk(any_db, first, image_ids=[*images, images[2]], status="cancelled")  # an image planned twice
    jobs.set_job(any_db, job_id, status="cancelled")
    jobs.write(any_db, job_id, [ok(images[0])])
    (chunk_id,) = jobs.retry_job(any_db, job_id)
    chunk = jobs.get_chunk(any_db, chunk_id)
    assert (chunk.seq, chunk.image_ids) == (1, images[1:])
    job = jobs.get_job(any_db, job_id)
    assert (job.total, job.done) == (3, 1)


def test_retry_without_a_chunk_size_in_params_uses_256(any_db: Engine) -> None:
    params = {"model": "m", "dataset": "d", "split": "test", "engine": "torch"}
    job_id = jobs.new_job(any_db, "evaluate", params)
    planned = list(range(1, 258))  # 257 images (chunk image ids are plain JSON)
    with session_scope(any_db) as session:
        create_chunks(session=session, job_id=job_id, image_ids=planned, chunk_size=300)
    jobs.set_job(any_db, job_id, status="failed")
    new_chunks = jobs.retry_job(any_db, job_id)
    assert [jobs.get_chunk(any_db, chunk_id).image_ids for chunk_id in new_chunks] == [planned[:256], planned[256:]]


def test_retry_refuses_other_kinds_open_jobs_and_jobs_with_nothing_to_redo(any_db: Engine, tmp_path: Path) -> None:
    train = jobs.new_job(any_db, "train", TRAIN)
    jobs.set_job(any_db, train, status="failed")
    with pytest.raises(InputError) as raised:
        jobs.retry_job(any_db, train)
    assert str(raised.value) == (
        f"job {train} is a train job; resubmit it instead (only caption/evaluate jobs retry per image)"
    )
    images = jobs.add_images(any_db, tmp_path / "img", 2)
    job_id, _ = jobs.caption_job(any_db, images, chunk_size=2)
    jobs.set_job(any_db, job_id, status="running")
    with pytest.raises(InputError) as raised:
        jobs.retry_job(any_db, job_id)
    assert str(raised.value) == f"job {job_id} is still running; cancel it first or wait"
    jobs.write(any_db, job_id, [ok(images[0]), ok(images[1])])
    jobs.set_job(any_db, job_id, status="succeeded")
    with pytest.raises(InputError) as raised:
        jobs.retry_job(any_db, job_id)
    assert str(raised.value) == f"job {job_id} has no failed or missing images"
    job = jobs.get_job(any_db, job_id)
    assert (job.status, job.done) == ("succeeded", 2)
    with session_scope(any_db) as session:
        assert session.scalar(select(func.count()).select_from(JobChunk).where(JobChunk.job_id == job_id)) == 1
        assert session.scalar(select(func.count()).select_from(Caption)) == 2


# --------------------------------------------------------------------------- model, broker task


def test_attach_model_and_mark_job_enqueued(any_db: Engine) -> None:
    model_id = jobs.add_model(any_db)
    job_id, other = jobs.new_job(any_db), jobs.new_job(any_db)
    beat = ago(100)
    jobs.set_job(any_db, job_id, heartbeat_at=beat)
    with session_scope(any_db) as session:
        lifecycle.attach_model(session=session, job_id=job_id, model_id=model_id)
        lifecycle.mark_job_enqueued(session=session, job_id=job_id, task_id="task-1")
    job = jobs.get_job(any_db, job_id)
    assert (job.model_id, job.broker_task_id, naive(job.heartbeat_at)) == (model_id, "task-1", naive(beat))
    assert naive(job.enqueued_at) > naive(ago(60))
    untouched = jobs.get_job(any_db, other)
    assert (untouched.model_id, untouched.broker_task_id, untouched.enqueued_at) == (None, None, None)
