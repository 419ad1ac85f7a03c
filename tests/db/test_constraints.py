"""The store's unique and check constraints hold on SQLite and PostgreSQL; caption writes upsert."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Dataset, Image, Job
from vicap_jobs.jobs.writer import CaptionResult, write_results


def _dataset(engine: Engine, name: str = "uitviic") -> int:
    with session_scope(engine) as session:
        dataset = Dataset(name=name, format="coco")
        session.add(dataset)
        session.flush()
        return dataset.id


def _image(engine: Engine, path: str, dataset_id: int | None = None) -> int:
    with session_scope(engine) as session:
        image = Image(dataset_id=dataset_id, path=path, file_name=path.rsplit("/", 1)[-1])
        session.add(image)
        session.flush()
        return image.id


def _job(engine: Engine, **values: object) -> int:
    with session_scope(engine) as session:
        job = Job(kind="caption", **values)
        session.add(job)
        session.flush()
        return job.id


def _count(engine: Engine, model: type, *where: object) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


# --------------------------------------------------------------------------- captions


def test_the_same_job_and_image_cannot_be_captioned_twice_through_the_orm(any_db: Engine) -> None:
    image_id = _image(any_db, "/photos/a.jpg")
    job_id = _job(any_db)
    with session_scope(any_db) as session:
        session.add(Caption(job_id=job_id, image_id=image_id, text="một cậu bé", engine="onnx", status="ok"))

    with pytest.raises(IntegrityError), session_scope(any_db) as session:
        session.add(Caption(job_id=job_id, image_id=image_id, text="hai cậu bé", engine="torch", status="ok"))

    with session_scope(any_db) as session:
        assert session.scalars(select(Caption.text)).all() == ["một cậu bé"]
    # another job may caption the same image
    other_job = _job(any_db)
    with session_scope(any_db) as session:
        session.add(Caption(job_id=other_job, image_id=image_id, text="một cậu bé", engine="onnx", status="ok"))
    assert _count(any_db, Caption) == 2


def _write(db: Engine, **values: Any) -> tuple[int, int]:
    with session_scope(db) as session:
        return write_results(session=session, **values)


def test_write_results_inserts_each_job_image_once_and_counts_it_once(any_db: Engine) -> None:
    images = [_image(any_db, f"/photos/{i}.jpg") for i in range(4)]
    job_id = _job(any_db, total=4)
    first = [
        CaptionResult(images[0], "một cậu bé đang đá bóng", 12.5, None),
        CaptionResult(images[1], None, None, "truncated or corrupt image data"),
        CaptionResult(images[2], "hai người chơi quần vợt", 11.0, None),
    ]

    assert _write(any_db, job_id=job_id, model_id=None, engine_name="onnx", results=first) == (2, 1)
    # a redelivered chunk: the same results again (a different text must not overwrite the first)
    again = [first[0]._replace(text="khác hẳn"), first[1], first[2]]
    assert _write(any_db, job_id=job_id, model_id=None, engine_name="onnx", results=again) == (0, 0)
    # a chunk overlapping the first: only the new image is written
    overlap = [first[2], CaptionResult(images[3], None, None, None)]
    assert _write(any_db, job_id=job_id, model_id=None, engine_name="torch", results=overlap) == (0, 1)

    with session_scope(any_db) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.done, job.failed, job.total) == (4, 2, 4)
        rows = {c.image_id: (c.status, c.text, c.error, c.engine) for c in session.scalars(select(Caption))}
    assert rows == {
        images[0]: ("ok", "một cậu bé đang đá bóng", None, "onnx"),
        images[1]: ("error", None, "truncated or corrupt image data", "onnx"),
        images[2]: ("ok", "hai người chơi quần vợt", None, "onnx"),
        images[3]: ("error", None, "no caption produced", "torch"),
    }


# --------------------------------------------------------------------------- data sets and images


def test_data_set_names_are_unique(any_db: Engine) -> None:
    _dataset(any_db, "uitviic")
    with pytest.raises(IntegrityError):
        _dataset(any_db, "uitviic")
    _dataset(any_db, "UIT-ViIC")
    assert _count(any_db, Dataset) == 2


def test_an_image_path_is_unique_within_a_data_set(any_db: Engine) -> None:
    first, second = _dataset(any_db, "a"), _dataset(any_db, "b")
    _image(any_db, "/data/x.jpg", first)
    with pytest.raises(IntegrityError):
        _image(any_db, "/data/x.jpg", first)
    _image(any_db, "/data/x.jpg", second)  # another data set may list the same file
    assert _count(any_db, Image) == 2


def test_an_ad_hoc_image_path_is_unique(any_db: Engine) -> None:
    """dataset_id NULL: a plain unique (dataset_id, path) would let duplicates through (NULL != NULL)."""
    dataset_id = _dataset(any_db)
    _image(any_db, "/photos/a.jpg")
    with pytest.raises(IntegrityError):
        _image(any_db, "/photos/a.jpg")
    _image(any_db, "/photos/a.jpg", dataset_id)  # the same file inside a data set is another row
    _image(any_db, "/photos/b.jpg")
    assert _count(any_db, Image, Image.dataset_id.is_(None)) == 2


# --------------------------------------------------------------------------- check constraints


@pytest.mark.parametrize("value", ["paused", "Queued", ""])
def test_job_status_is_checked(any_db: Engine, value: str) -> None:
    # Job kinds are validated by the job-kind table since migration 0003 (tests/jobs/test_lifecycle.py).
    with pytest.raises(IntegrityError, match="ck_jobs_status"), session_scope(any_db) as session:
        session.add(Job(kind="caption", status=value))
    assert _count(any_db, Job) == 0


def test_every_documented_job_kind_and_status_is_accepted(any_db: Engine) -> None:
    kinds = ("train", "export", "caption", "evaluate")
    statuses = ("queued", "running", "succeeded", "failed", "cancelled")
    with session_scope(any_db) as session:
        session.add_all(Job(kind=kind, status=status) for kind in kinds for status in statuses)
    assert _count(any_db, Job) == len(kinds) * len(statuses)
