"""Bulk captioning of one partition (chunk): reader → engine → writer.

The next batch's files are decoded in a read-ahead thread while the engine captions the current one.
Independent of how work is distributed: Celery hands out chunk ids (the ``caption`` job kind's
messages), an evaluate job runs its chunks one after another, tests call :func:`run_chunk`
directly. Every chunk records completion, so a redelivered message skips finished work; only the
chunk's images without a caption row for the job reach the engine; every image gets a row, ok or
error with a reason, instead of failing its chunk. State changes go through ``vicap_jobs.jobs``.

Perceptual hashes (``images.phash``) are computed here, from the photos decoded for the engine
anyway, in the read-ahead thread, and written with the caption rows (one more statement per
write, ``jobs.writer.write_phashes``). Once per content: an image whose sha256 already has a hash
in the store gets that hash without hashing, and of several images of the chunk with the same
content only the first is hashed, so a second job over the same photos hashes nothing. Two chunks
hashing the same new content at the same moment may both hash it (the same value; the first write
stays). Hashing time counts in the chunk's ``read_s``.

Cost, measured on the shared 2-core box (load 5-6 from other work), of the 64-bit hash this was
first: ``perceptual_hash`` of a 224×224 photo took 0.35 ms quiet, 0.55-0.75 ms busy (two thirds of
it Pillow's Lanczos reduction), against 0.3-0.5 ms to decode the JPEG. A tiny cnn-lstm (64 px,
one torch thread) infers in ~2.3 ms per image, so the hash is 20-25 % of its time, and a chunk of
256 new 224×224 JPEGs went from 2.6 to 3.5 ms per image (median of 7): the reader thread,
hashing, competed for the busy cores with the engine. With a free core the reader (0.65 ms per
image) should stay ahead of such a model and hide the hash (not measured: the box was never
quiet); against a real model (50-100 ms per image on a CPU) it is under 1.5 %. It is paid once per
content. The 256-bit hash now stored (``data.phash``: 64×64 grey, one DCT, and large photos
box-reduced first) costs the same within the noise: 1.8 ms for 640×480, 2.3 ms for 1280×960
(2026-11-30, busy box), so these figures stand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image as PILImage
from sqlalchemy import Engine, select

from vicap_jobs.db.session import commit_without_waiting, session_scope
from vicap_jobs.db.status import FINISHED_JOB, JobStatus
from vicap_jobs.db.tables import Image
from vicap_jobs.errors import VicapError
from vicap_jobs.jobs.chunks import (
    ChunkOutcome,
    OutcomeStatus,
    beat_chunk,
    captioned_among,
    claim_chunk,
    close_chunk,
    finish_if_drained,
    release_chunk,
)
from vicap_jobs.jobs.lifecycle import fail_job, get_job, start_job
from vicap_jobs.jobs.queries import job_status
from vicap_jobs.jobs.writer import CaptionResult, known_phashes, write_phashes, write_results
from vicap_jobs.pipeline.reader import BatchReader, ReadBatch, read_batch
from vicap_jobs.settings import get_settings
from vicap_jobs.storage.objects import StorageUnavailable

log = logging.getLogger(__name__)

#: Caption rows are written (with the job's counters) once this many are waiting, or once
#: WRITE_EVERY_S has passed since the last write, and at the end of the chunk. One transaction per
#: engine batch of 16 cost ~10 ms on PostgreSQL (a WAL flush per commit) against ~13 ms of a tiny
#: model's inference: writes took 30% of the chunks' time at 10,000 images, 4-7% written this way
#: (bench/scale.py). A worker that dies loses at most that much captioning; the chunk is redone
#: without its written images.
WRITE_EVERY_ROWS = 256
WRITE_EVERY_S = 2.0


class Captioner(Protocol):
    """What the runner needs of an engine (``vicap_jobs.engines.base.CaptionEngine`` is one)."""

    @property
    def name(self) -> str: ...

    def caption(self, images: Sequence[PILImage.Image]) -> list[str]: ...


class EngineProvider(Protocol):
    """A worker process's loaded engines (``vicap_jobs.services.model_engines.EngineCache``)."""

    device: str

    def get(self, model_id: int, engine_name: str | None) -> Captioner:
        """The engine ``engine_name`` of the model (None: the model's default engine on this worker)."""
        ...


@dataclass
class _Totals:
    ok: int = 0
    failed: int = 0
    read_s: float = 0.0
    infer_s: float = 0.0
    write_s: float = 0.0

    def outcome(self, status: OutcomeStatus) -> ChunkOutcome:
        return ChunkOutcome(status, self.ok, self.failed, self.read_s, self.infer_s, self.write_s)


def run_chunk(
    *,
    db: Engine,
    chunk_id: int,
    engines: EngineProvider,
    worker_name: str,
    heartbeat: Callable[[], None] | None = None,
) -> ChunkOutcome:
    """Caption the images of one chunk that its job has not captioned yet; end the job if it was the last.

    Stops at the next batch boundary when the job is cancelled. A model that cannot load fails the
    whole job (every chunk would fail the same way).
    """
    with session_scope(db) as session:
        chunk = claim_chunk(session=session, chunk_id=chunk_id, worker=worker_name)
        if chunk is None:
            return ChunkOutcome("skipped")
        job = get_job(session=session, job_id=chunk.job_id)
        if job.status in FINISHED_JOB:
            cancelled = job.status == JobStatus.CANCELLED
            outcome = ChunkOutcome("cancelled" if cancelled else "done")
            close_chunk(session=session, chunk_id=chunk_id, outcome=outcome)
            return outcome if cancelled else ChunkOutcome("skipped")
        start_job(session=session, job_id=job.id, device=engines.device)
        image_ids, job_id, model_id = list(chunk.image_ids), job.id, job.model_id
        engine_name = job.params.get("engine")  # None: the worker's measured default
        batch_size = int(job.params.get("batch_size") or 8)
    try:
        if model_id is None:
            raise VicapError(f"job {job_id} has no model")
        engine = engines.get(model_id, engine_name)
    except StorageUnavailable as exc:  # the model's artifacts could not be downloaded now: later, maybe elsewhere
        return _release(db, chunk_id, job_id, f"cannot load model: {exc}", _Totals())
    except VicapError as exc:
        return _fail(db, job_id, f"cannot load model: {exc}")
    except Exception as exc:  # noqa: BLE001 - a broken artifact must fail the job, not loop forever
        log.exception("loading model for job %d", job_id)
        return _fail(db, job_id, f"cannot load model: {type(exc).__name__}: {exc}")

    totals = _Totals()
    items = _uncaptioned(db, job_id, image_ids)
    hashing = _plan_hashes(db, [image_id for image_id, _ in items])
    batches = list(_batches(items, batch_size))
    pending_rows: list[CaptionResult] = []
    last_write = time.monotonic()
    settings = get_settings()
    with BatchReader(batches, hashing.to_hash, settings.read_ahead, settings.storage_concurrency) as reader:
        for index, batch in enumerate(batches):
            if _is_cancelled(db, job_id):
                _write(db, job_id, model_id, engine.name, chunk_id, pending_rows, totals, hashing.take())
                return _close(db, chunk_id, totals.outcome("cancelled"))
            try:
                read = reader.read(index)
            except StorageUnavailable as exc:
                _write(db, job_id, model_id, engine.name, chunk_id, pending_rows, totals, hashing.take())
                return _release(db, chunk_id, job_id, str(exc), totals)
            hashing.learn(batch, read.hashes)
            results, infer_s = infer_batch(engine, batch, read)
            totals.read_s, totals.infer_s = totals.read_s + read.seconds, totals.infer_s + infer_s
            pending_rows += results
            if len(pending_rows) >= WRITE_EVERY_ROWS or time.monotonic() - last_write >= WRITE_EVERY_S:
                _write(db, job_id, model_id, engine.name, chunk_id, pending_rows, totals, hashing.take())
                pending_rows, last_write = [], time.monotonic()
            if heartbeat is not None:
                heartbeat()
    _write(db, job_id, model_id, engine.name, chunk_id, pending_rows, totals, hashing.take())
    outcome = _close(db, chunk_id, totals.outcome("done"))
    with session_scope(db) as session:  # after the close is committed: see vicap_jobs.jobs.chunks
        finish_if_drained(session=session, job_id=job_id)
    log.info(
        "chunk %d of job %d: %d ok, %d failed; read %.2fs infer %.2fs write %.2fs",
        chunk_id,
        job_id,
        outcome.n_ok,
        outcome.n_failed,
        outcome.read_s,
        outcome.infer_s,
        outcome.write_s,
    )
    return outcome


@dataclass
class _Hashing:
    """The chunk's perceptual hashes: which images to hash when decoded, and the hashes waiting to be written.

    ``to_hash``: one image per content (sha256) that has no hash anywhere in the store (and every
    image without a sha256); ``sha256``: the content of each chunk image without a hash;
    ``known``: content → hash, from the store and from this chunk's hashing.
    """

    to_hash: frozenset[int] = frozenset()
    sha256: dict[int, str | None] = field(default_factory=dict)
    known: dict[str, str] = field(default_factory=dict)
    pending: dict[int, str] = field(default_factory=dict)

    def learn(self, batch: Sequence[tuple[int, str]], hashes: Mapping[int, str]) -> None:
        """Take a read batch's new hashes; its images without a hash get their content's, when known now."""
        for image_id, value in hashes.items():
            content = self.sha256.get(image_id)
            if content:
                self.known.setdefault(content, value)
        for image_id, _ in batch:
            if image_id not in self.sha256:
                continue  # hashed already
            digest = self.sha256[image_id]
            found = hashes.get(image_id) or (self.known.get(digest) if digest else None)
            if found is not None:
                self.pending[image_id] = found

    def take(self) -> dict[int, str]:
        """The hashes learned since the last write (to write with it)."""
        taken, self.pending = self.pending, {}
        return taken


def infer_batch(
    engine: Captioner, batch: Sequence[tuple[int, str]], read: ReadBatch
) -> tuple[list[CaptionResult], float]:
    """Caption the batch's good images; returns one result per batch item, in batch order, and seconds in the engine."""
    started = time.perf_counter()
    results = dict(read.errors)
    good = read.good
    if good:
        texts: list[str | None]
        reason: str | None = None
        try:
            texts = list(engine.caption([image for _, image in good]))
            if len(texts) != len(good):  # a broken engine fails its batch's images, not the chunk
                raise ValueError(f"the engine returned {len(texts)} captions for {len(good)} images")
        except Exception as exc:  # noqa: BLE001 - recorded per image; the job goes on
            log.exception("engine failed on a batch of %d images", len(good))
            texts = [None] * len(good)
            reason = f"engine error: {type(exc).__name__}: {exc}"
        elapsed_ms = (time.perf_counter() - started) * 1000 / len(good)
        for (image_id, _), text in zip(good, texts, strict=True):
            results[image_id] = CaptionResult(image_id, text, elapsed_ms if text is not None else None, reason)
    infer_s = time.perf_counter() - started
    return [results[image_id] for image_id, _ in batch], infer_s


def caption_batch(engine: Captioner, batch: Sequence[tuple[int, str]]) -> tuple[list[CaptionResult], float, float]:
    """Decode the batch's images (bad ones become error results), then caption the good ones.

    Returns the results in batch order, seconds reading and seconds in the engine.
    """
    read = read_batch(batch)
    results, infer_s = infer_batch(engine, batch, read)
    return results, read.seconds, infer_s


def _uncaptioned(db: Engine, job_id: int, image_ids: Sequence[int]) -> list[tuple[int, str]]:
    """(image id, path) of the chunk's images without a caption row for this job, in chunk order.

    The paths are looked up by the ids' range as well as their list, for the reason given in
    ``captioned_among``: by the list alone PostgreSQL scanned the whole images table for each chunk.
    """
    if not image_ids:
        return []
    with session_scope(db) as session:
        done = captioned_among(session=session, job_id=job_id, image_ids=image_ids)
        in_range = Image.id.between(min(image_ids), max(image_ids))
        query = select(Image.id, Image.path).where(in_range, Image.id.in_(image_ids))
        paths = {image_id: path for image_id, path in session.execute(query)}
    return [(i, paths[i]) for i in image_ids if i not in done and i in paths]


def _plan_hashes(db: Engine, image_ids: Sequence[int]) -> _Hashing:
    """Which of these images to hash when decoded: those without a hash whose content has none in the store yet.

    Images whose content already has a hash get it at their write without hashing; of several
    images with the same new content only the first is hashed.
    """
    if not image_ids:
        return _Hashing()
    with session_scope(db) as session:
        in_range = Image.id.between(min(image_ids), max(image_ids))
        query = select(Image.id, Image.sha256).where(in_range, Image.id.in_(image_ids), Image.phash.is_(None))
        sha256 = {image_id: digest for image_id, digest in session.execute(query)}
        known = known_phashes(session=session, digests=[d for d in sha256.values() if d])
    to_hash: set[int] = set()
    first: set[str] = set()
    for image_id in image_ids:  # chunk order: the first image of a content is read first
        if image_id not in sha256:
            continue
        digest = sha256[image_id]
        if digest is None:
            to_hash.add(image_id)
        elif digest not in known and digest not in first:
            first.add(digest)
            to_hash.add(image_id)
    return _Hashing(to_hash=frozenset(to_hash), sha256=sha256, known=known)


def _batches(items: Sequence[tuple[int, str]], size: int) -> Iterator[Sequence[tuple[int, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write(
    db: Engine,
    job_id: int,
    model_id: int | None,
    engine_name: str,
    chunk_id: int,
    results: Sequence[CaptionResult],
    totals: _Totals,
    hashes: Mapping[int, str],
) -> None:
    """One transaction: the results' caption rows, the job's counters, the images' new hashes and the chunk's heartbeat.

    Its commit does not wait for the disk: the chunk's close, an ordinary commit, makes it durable.
    """
    if not results:
        return
    started = time.perf_counter()
    with session_scope(db) as session:
        commit_without_waiting(session)
        n_ok, n_failed = write_results(
            session=session, job_id=job_id, model_id=model_id, engine_name=engine_name, results=results
        )
        write_phashes(session=session, hashes=hashes)
        beat_chunk(session=session, chunk_id=chunk_id)
    totals.write_s += time.perf_counter() - started
    totals.ok, totals.failed = totals.ok + n_ok, totals.failed + n_failed


def _is_cancelled(db: Engine, job_id: int) -> bool:
    with session_scope(db) as session:
        return job_status(session=session, job_id=job_id) == JobStatus.CANCELLED


def _close(db: Engine, chunk_id: int, outcome: ChunkOutcome) -> ChunkOutcome:
    with session_scope(db) as session:
        close_chunk(session=session, chunk_id=chunk_id, outcome=outcome)
    return outcome


def _release(db: Engine, chunk_id: int, job_id: int, reason: str, totals: _Totals) -> ChunkOutcome:
    """Give the chunk back to the queue (the caller publishes it again: "requeued"), or give it up after max attempts.

    A chunk given up ends with error rows for its uncaptioned images, but its job goes on ("skipped":
    nothing more for this worker to do), unlike a model that cannot load, which fails the job ("failed").
    """
    log.warning("chunk %d of job %d goes back to the queue: %s", chunk_id, job_id, reason)
    with session_scope(db) as session:
        released = release_chunk(
            session=session, chunk_id=chunk_id, reason=reason, max_attempts=get_settings().max_chunk_attempts
        )
    if released == "failed":
        with session_scope(db) as session:
            finish_if_drained(session=session, job_id=job_id)
    return totals.outcome("requeued" if released == "requeued" else "skipped")


def _fail(db: Engine, job_id: int, reason: str) -> ChunkOutcome:
    with session_scope(db) as session:
        fail_job(session=session, job_id=job_id, reason=reason)
    return ChunkOutcome("failed")
