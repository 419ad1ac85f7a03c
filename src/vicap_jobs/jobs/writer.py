"""Caption rows: one per (job, image), never duplicated, the job's counters moved in the same transaction.

A redelivered chunk that races with its first delivery inserts nothing twice (``captions`` is
unique on job_id, image_id) and counts only what it inserted, so ``jobs.done`` / ``jobs.failed``
always equal the rows. Captions copied from an earlier job (``submit caption --skip-known``) go in
the same way, with ``reused_from_id`` (:func:`copy_captions`). The perceptual hashes a worker
computed while decoding are written beside its caption rows, in one statement per write
(:func:`write_phashes`), and looked up by content first (:func:`known_phashes`), so a content is
hashed once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Integer, String, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.bulk import insert_rows
from vicap_jobs.db.status import CaptionStatus
from vicap_jobs.db.tables import Caption, Image, Job

#: Contents per ``sha256 IN (...)`` lookup.
PAGE = 1000


class CaptionResult(NamedTuple):
    """The outcome for one image: text, or None with the reason."""

    image_id: int
    text: str | None
    latency_ms: float | None
    error: str | None


def write_results(
    *, session: Session, job_id: int, model_id: int | None, engine_name: str, results: Sequence[CaptionResult]
) -> tuple[int, int]:
    """Insert the rows that do not exist yet and bump the job's counters by what was inserted.

    Returns (ok rows inserted, error rows inserted). A result is ok only with text and no error.
    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING status`` for the whole batch
    (``vicap_jobs.db.bulk``), then one counter update.
    """
    if not results:
        return 0, 0
    now = utcnow()
    rows = [_row(job_id, model_id, engine_name, result, now) for result in results]
    insert, parameters = insert_rows(session, Caption, rows)
    statement = insert.on_conflict_do_nothing(index_elements=["job_id", "image_id"]).returning(
        Caption.status  # only the rows inserted come back; rowcount is -1 here on PostgreSQL
    )
    statuses = list(session.connection().execute(statement, parameters).scalars())
    n_ok = statuses.count(CaptionStatus.OK)
    n_failed = len(statuses) - n_ok
    if statuses:
        session.execute(
            update(Job).where(Job.id == job_id).values(done=Job.done + n_ok + n_failed, failed=Job.failed + n_failed)
        )
    return n_ok, n_failed


def _row(job_id: int, model_id: int | None, engine_name: str, result: CaptionResult, now: datetime) -> dict[str, Any]:
    """The caption row of one result: ok with its text and latency, or error with its reason."""
    ok = result.text is not None and result.error is None
    return {
        "job_id": job_id,
        "image_id": result.image_id,
        "model_id": model_id,
        "text": result.text if ok else None,
        "engine": engine_name,
        "latency_ms": result.latency_ms if ok else None,
        "status": CaptionStatus.OK if ok else CaptionStatus.ERROR,
        "error": None if ok else (result.error or "no caption produced"),
        "created_at": now,
    }


class ReusedCaption(NamedTuple):
    """An earlier ok caption of the same content, to copy for ``image_id``: its id, text and engine."""

    image_id: int
    caption_id: int
    text: str
    engine: str


def copy_captions(*, session: Session, job_id: int, model_id: int | None, captions: Sequence[ReusedCaption]) -> int:
    """Ok caption rows of the job that copy earlier captions (``reused_from_id``); returns how many were inserted.

    Each row keeps the text and the engine of the caption it copies, has no latency (no engine
    ran for it in this job) and counts as done. Idempotent like :func:`write_results`.
    """
    if not captions:
        return 0
    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "image_id": reused.image_id,
            "model_id": model_id,
            "text": reused.text,
            "engine": reused.engine,
            "latency_ms": None,
            "status": CaptionStatus.OK,
            "error": None,
            "reused_from_id": reused.caption_id,
            "created_at": now,
        }
        for reused in captions
    ]
    insert, parameters = insert_rows(session, Caption, rows)
    statement = insert.on_conflict_do_nothing(index_elements=["job_id", "image_id"]).returning(Caption.id)
    n_copied = len(list(session.connection().execute(statement, parameters).scalars()))
    if n_copied:
        session.execute(update(Job).where(Job.id == job_id).values(done=Job.done + n_copied))
    return n_copied


def write_phashes(*, session: Session, hashes: Mapping[int, str]) -> None:
    """Store perceptual hashes (image id → 64 hex digits) on the image rows that have none, in one statement.

    PostgreSQL: one ``UPDATE images ... FROM unnest(ids, hashes)``; SQLite, in-process: one
    executemany. A row hashed meanwhile by another worker keeps its hash (the same content, the
    same value).
    """
    if not hashes:
        return
    images = cast(Table, Image.__table__)
    if session.get_bind().dialect.name == "postgresql":
        source = (
            func.unnest(
                bindparam("hashed_ids", list(hashes), type_=postgresql.ARRAY(Integer)),
                bindparam("hashes", list(hashes.values()), type_=postgresql.ARRAY(String)),
            )
            .table_valued("id", "phash")
            .render_derived()
        )
        statement = update(images).where(images.c.id == source.c.id, images.c.phash.is_(None))
        session.connection().execute(statement.values(phash=source.c.phash))
        return
    statement = (
        update(images)
        .where(images.c.id == bindparam("hashed_id"), images.c.phash.is_(None))
        .values(phash=bindparam("hash"))
    )
    session.connection().execute(statement, [{"hashed_id": i, "hash": h} for i, h in hashes.items()])


def known_phashes(*, session: Session, digests: Iterable[str]) -> dict[str, str]:
    """sha256 → perceptual hash, for the contents among ``digests`` that an image row already has a hash for."""
    wanted = list(dict.fromkeys(digests))
    known: dict[str, str] = {}
    for start in range(0, len(wanted), PAGE):
        page = wanted[start : start + PAGE]
        query = select(Image.sha256, Image.phash).where(Image.sha256.in_(page), Image.phash.is_not(None))
        for sha, value in session.execute(query):
            if sha is not None and value is not None:
                known[sha] = value
    return known
