"""Engine-taking shorthands over the session-taking job transitions, for tests that act as one caller.

Each helper opens its own transaction, as a CLI command or a worker would. The builders at the end
make rows without the services (no folder walk, no checkpoint): a model row that no engine loads,
distinct image files a spy engine can tell apart, a caption job with its chunks, aged timestamps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import ORMExecuteState, Session

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Image, Job, JobChunk, Model
from vicap_jobs.jobs import chunks, lifecycle, queries, recovery
from vicap_jobs.jobs.writer import CaptionResult, write_results


def get_job(db: Engine, job_id: int) -> Job:
    with session_scope(db) as session:
        return lifecycle.get_job(session=session, job_id=job_id)


def get_chunk(db: Engine, chunk_id: int) -> JobChunk:
    with session_scope(db) as session:
        chunk = session.get(JobChunk, chunk_id)
        assert chunk is not None
        return chunk


def job_summary(db: Engine, job_id: int) -> queries.JobSummary:
    with session_scope(db) as session:
        return queries.job_summary(session=session, job_id=job_id)


def cancel_job(db: Engine, job_id: int) -> list[str]:
    with session_scope(db) as session:
        return lifecycle.cancel_job(session=session, job_id=job_id)


def retry_job(db: Engine, job_id: int) -> list[int]:
    with session_scope(db) as session:
        return lifecycle.retry_job(session=session, job_id=job_id)


def claim_chunk(db: Engine, chunk_id: int, worker: str) -> JobChunk | None:
    with session_scope(db) as session:
        return chunks.claim_chunk(session=session, chunk_id=chunk_id, worker=worker)


def mark_chunk_enqueued(db: Engine, chunk_id: int, task_id: str) -> None:
    with session_scope(db) as session:
        chunks.mark_chunks_enqueued(session=session, task_ids={chunk_id: task_id})


def requeue_stale_chunks(db: Engine, *, stale_after_s: float = 0.0, max_attempts: int = 5) -> recovery.StaleChunks:
    with session_scope(db) as session:
        return recovery.requeue_stale_chunks(session=session, stale_after_s=stale_after_s, max_attempts=max_attempts)


def finish_if_drained(db: Engine, job_id: int) -> str | None:
    with session_scope(db) as session:
        return chunks.finish_if_drained(session=session, job_id=job_id)


# --------------------------------------------------------------------------- builders

#: Width of the first image made by :func:`add_images`; image ``i`` is ``IMAGE_WIDTH + i`` pixels wide.
IMAGE_WIDTH = 8


def add_model(db: Engine, name: str = "spy") -> int:
    """A model row whose artifacts do not exist (for tests that hand the runner their own engine)."""
    with session_scope(db) as session:
        model = Model(name=name, family="cnn-lstm", artifact_dir=f"/nonexistent/{name}")
        session.add(model)
        session.flush()
        return model.id


def add_images(db: Engine, folder: Path, n: int) -> list[int]:
    """``n`` readable PNGs, image ``i`` being ``IMAGE_WIDTH + i`` pixels wide, registered as ad-hoc images."""
    from PIL import Image as PILImage

    folder.mkdir(parents=True, exist_ok=True)
    ids: list[int] = []
    with session_scope(db) as session:
        for i in range(n):
            path = folder / f"img{i:03d}.png"
            PILImage.new("RGB", (IMAGE_WIDTH + i, 4), (40 * i % 256, 90, 160)).save(path)
            image = Image(dataset_id=None, path=str(path), file_name=path.name, width=IMAGE_WIDTH + i, height=4)
            session.add(image)
            session.flush()
            ids.append(image.id)
    return ids


def new_job(db: Engine, kind: str = "export", params: Mapping[str, Any] | None = None, **values: Any) -> int:
    """A queued job through ``lifecycle.create_job`` (export ``{"model": "m"}`` unless told otherwise)."""
    with session_scope(db) as session:
        return lifecycle.create_job(session=session, kind=kind, params=params or {"model": "m"}, **values)


def caption_job(
    db: Engine,
    image_ids: Sequence[int],
    *,
    chunk_size: int,
    batch_size: int = 2,
    model_id: int | None = None,
    engine: str = "torch",
    gpu: int | None = None,
) -> tuple[int, list[int]]:
    """A queued caption job over ``image_ids`` in chunks of ``chunk_size``: (job id, chunk ids)."""
    params = {"folder": "/photos", "model": "spy", "engine": engine, "batch_size": batch_size, "chunk_size": chunk_size}
    with session_scope(db) as session:
        job_id = lifecycle.create_job(
            session=session, kind="caption", params=params, model_id=model_id, total=len(image_ids), gpu=gpu
        )
        chunk_ids = chunks.create_chunks(session=session, job_id=job_id, image_ids=image_ids, chunk_size=chunk_size)
    return job_id, chunk_ids


def set_job(db: Engine, job_id: int, **values: Any) -> None:
    """Overwrite columns of a job row (to stage a state no transition reaches directly)."""
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def set_chunk(db: Engine, chunk_id: int, **values: Any) -> None:
    """Overwrite columns of a chunk row."""
    with session_scope(db) as session:
        session.execute(update(JobChunk).where(JobChunk.id == chunk_id).values(**values))


def ago(seconds: float) -> datetime:
    """The moment ``seconds`` before now (UTC)."""
    return utcnow() - timedelta(seconds=seconds)


def write(db: Engine, job_id: int, results: Sequence[CaptionResult], engine: str = "torch") -> tuple[int, int]:
    """``write_results`` in its own transaction, as a worker writes one batch."""
    with session_scope(db) as session:
        model_id = session.scalar(select(Job.model_id).where(Job.id == job_id))
        return write_results(session=session, job_id=job_id, model_id=model_id, engine_name=engine, results=results)


def ok(image_id: int, text: str = "một bức ảnh") -> CaptionResult:
    return CaptionResult(image_id, text, 1.5, None)


def error(image_id: int, reason: str = "cannot read image: broken") -> CaptionResult:
    return CaptionResult(image_id, None, None, reason)


def captions(db: Engine, job_id: int) -> dict[int, tuple[str, str | None, str | None]]:
    """image id → (status, text, error) of the job's caption rows."""
    with session_scope(db) as session:
        rows = session.execute(
            select(Caption.image_id, Caption.status, Caption.text, Caption.error).where(Caption.job_id == job_id)
        ).all()
    return {image_id: (status, text, reason) for image_id, status, text, reason in rows}


def chunk_states(db: Engine, job_id: int) -> list[str]:
    """The statuses of the job's chunks, in chunk order."""
    with session_scope(db) as session:
        return list(session.scalars(select(JobChunk.status).where(JobChunk.job_id == job_id).order_by(JobChunk.seq)))


def naive(moment: datetime | None) -> datetime | None:
    """A stored timestamp without its zone (SQLite returns naive UTC, PostgreSQL aware), for comparisons."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def before_first_write(session: Session, action: Callable[[], None]) -> list[bool]:
    """Run ``action`` (another worker's own transaction) once, just before ``session`` first writes.

    Returns a list that holds True once the action ran.
    """
    fired: list[bool] = []

    def fire() -> None:
        if not fired:
            fired.append(True)
            action()

    @event.listens_for(session, "before_flush")
    def _on_flush(*_: object) -> None:
        fire()

    @event.listens_for(session, "do_orm_execute")
    def _on_execute(state: ORMExecuteState) -> None:
        if state.is_insert or state.is_update or state.is_delete:
            fire()

    return fired
