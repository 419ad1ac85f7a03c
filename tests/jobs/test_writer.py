"""Caption rows and the job's counters (``vicap_jobs.jobs.writer``) on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, select

from tests import store_helpers as jobs
from tests.store_helpers import error, ok
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption
from vicap_jobs.jobs.writer import CaptionResult


def _rows(db: Engine, job_id: int) -> list[tuple[object, ...]]:
    with session_scope(db) as session:
        return [
            tuple(row)
            for row in session.execute(
                select(
                    Caption.image_id,
                    Caption.model_id,
                    Caption.engine,
                    Caption.status,
                    Caption.text,
                    Caption.latency_ms,
                    Caption.error,
                )
                .where(Caption.job_id == job_id)
                .order_by(Caption.image_id)
            )
        ]


def test_each_result_becomes_one_row_and_moves_the_counters(any_db: Engine, tmp_path: Path) -> None:
    model_id = jobs.add_model(any_db)
    a, b, c, d = jobs.add_images(any_db, tmp_path / "img", 4)
    job_id, _ = jobs.caption_job(any_db, [a, b, c, d], chunk_size=4, model_id=model_id)
    jobs.set_job(any_db, job_id, done=1, failed=1)  # counted earlier by another chunk
    results = [
        CaptionResult(a, "hai con mèo", 12.5, None),
        CaptionResult(b, None, None, "cannot read image: truncated"),
        CaptionResult(c, None, 3.0, None),  # no text and no reason
        CaptionResult(d, "half", 4.0, "engine error: x"),  # a reason wins over text
    ]
    assert jobs.write(any_db, job_id, results, engine="onnx") == (1, 3)
    assert _rows(any_db, job_id) == [
        (a, model_id, "onnx", "ok", "hai con mèo", 12.5, None),
        (b, model_id, "onnx", "error", None, None, "cannot read image: truncated"),
        (c, model_id, "onnx", "error", None, None, "no caption produced"),
        (d, model_id, "onnx", "error", None, None, "engine error: x"),
    ]
    job = jobs.get_job(any_db, job_id)
    assert (job.done, job.failed) == (5, 4)


def test_a_second_write_of_the_same_images_inserts_and_counts_only_new_ones(any_db: Engine, tmp_path: Path) -> None:
    a, b, c = jobs.add_images(any_db, tmp_path / "img", 3)
    job_id, _ = jobs.caption_job(any_db, [a, b, c], chunk_size=3)
    assert jobs.write(any_db, job_id, [ok(a, "first"), error(b)]) == (1, 1)
    assert jobs.write(any_db, job_id, [ok(a, "second"), ok(b, "now fine"), error(c)]) == (0, 1)
    assert jobs.write(any_db, job_id, [ok(a), error(c)]) == (0, 0)
    assert jobs.captions(any_db, job_id) == {
        a: ("ok", "first", None),
        b: ("error", None, "cannot read image: broken"),
        c: ("error", None, "cannot read image: broken"),
    }
    job = jobs.get_job(any_db, job_id)
    assert (job.done, job.failed) == (3, 2)


def test_ok_rows_alone_move_done_and_not_failed(any_db: Engine, tmp_path: Path) -> None:
    a, b = jobs.add_images(any_db, tmp_path / "img", 2)
    job_id, _ = jobs.caption_job(any_db, [a, b], chunk_size=2)
    assert jobs.write(any_db, job_id, [ok(a), ok(b)]) == (2, 0)
    job = jobs.get_job(any_db, job_id)
    assert (job.done, job.failed) == (2, 0)


def test_the_same_image_in_another_job_gets_its_own_row(any_db: Engine, tmp_path: Path) -> None:
    (a,) = jobs.add_images(any_db, tmp_path / "img", 1)
    first, _ = jobs.caption_job(any_db, [a], chunk_size=1)
    second, _ = jobs.caption_job(any_db, [a], chunk_size=1)
    assert jobs.write(any_db, first, [ok(a, "one")]) == (1, 0)
    assert jobs.write(any_db, second, [ok(a, "two")]) == (1, 0)
    assert jobs.captions(any_db, first) == {a: ("ok", "one", None)}
    assert jobs.captions(any_db, second) == {a: ("ok", "two", None)}
    assert jobs.get_job(any_db, second).done == 1


def test_no_results_write_nothing(any_db: Engine) -> None:
    job_id, _ = jobs.caption_job(any_db, [1], chunk_size=1)
    assert jobs.write(any_db, job_id, []) == (0, 0)
    assert jobs.get_job(any_db, job_id).done == 0


def test_an_image_twice_in_one_batch_is_one_row_counted_once(any_db: Engine, tmp_path: Path) -> None:
    a, b = jobs.add_images(any_db, tmp_path / "img", 2)
    job_id, _ = jobs.caption_job(any_db, [a, b], chunk_size=2)
    assert jobs.write(any_db, job_id, [ok(a, "first"), error(b), ok(a, "second")]) == (1, 1)
    assert jobs.captions(any_db, job_id) == {a: ("ok", "first", None), b: ("error", None, "cannot read image: broken")}
    job = jobs.get_job(any_db, job_id)
    assert (job.done, job.failed) == (2, 1)


def test_a_large_batch_is_written_whole(any_db: Engine, tmp_path: Path) -> None:
    images = jobs.add_images(any_db, tmp_path / "img", 300)
    job_id, _ = jobs.caption_job(any_db, images, chunk_size=300)
    results = [error(i) if n % 7 == 0 else ok(i, f"ảnh {n}") for n, i in enumerate(images)]
    assert jobs.write(any_db, job_id, results) == (257, 43)
    rows = jobs.captions(any_db, job_id)
    assert len(rows) == 300 and rows[images[8]] == ("ok", "ảnh 8", None)
    assert (jobs.get_job(any_db, job_id).done, jobs.get_job(any_db, job_id).failed) == (300, 43)
