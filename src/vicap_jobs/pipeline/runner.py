"""Bulk captioning of one partition (chunk): reader → engine → writer.

Independent of how work is distributed: Celery hands out chunk ids, tests and
``--wait`` fallbacks call :func:`run_chunk` directly. Every chunk records
completion, so a redelivered task skips finished work, and every image gets a
caption row with status ok or error + reason instead of failing its chunk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, update

from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Image, Job, JobChunk
from vicap_jobs.errors import VicapError
from vicap_jobs.pipeline.writer import CaptionResult, write_results
from vicap_jobs.services import jobs
from vicap_jobs.services.models import ModelRef, model_by_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkOutcome:
    """What happened to one chunk; timings are seconds."""

    status: str  # done | skipped | cancelled | failed
    n_ok: int = 0
    n_failed: int = 0
    read_s: float = 0.0
    infer_s: float = 0.0
    write_s: float = 0.0


class EngineCache:
    """Loaded inference engines per (model id, engine name), one cache per worker process."""

    def __init__(self, *, device: str = "cpu", threads: int | None = None) -> None:
        self.device = device
        self.threads = threads
        self._engines: dict[tuple[int, str, str], Any] = {}

    def get(self, model: ModelRef, engine_name: str) -> Any:
        key = (model.id, engine_name, model.exported_at.isoformat() if model.exported_at else "")
        if key not in self._engines:
            from vicap_jobs.engines import ModelArtifacts, load_engine

            exports = {"onnx": Path(model.onnx_path)} if model.onnx_path else {}
            self._engines[key] = load_engine(
                engine_name,
                ModelArtifacts(Path(model.artifact_dir), exports=exports),
                device=self.device,
                threads=self.threads,
            )
        return self._engines[key]


def run_chunk(
    *,
    db: Engine,
    chunk_id: int,
    engines: EngineCache,
    worker_name: str,
    heartbeat: Callable[[], None] | None = None,
) -> ChunkOutcome:
    """Caption the images of one chunk that the job has not captioned yet."""
    chunk = jobs.claim_chunk(db=db, chunk_id=chunk_id, worker_name=worker_name)
    if chunk is None:
        return ChunkOutcome(status="skipped")
    job = jobs.get_job(db=db, job_id=chunk.job_id)
    if job.status in ("cancelled", "failed", "succeeded"):
        _close_chunk(db, chunk_id, "cancelled" if job.status == "cancelled" else "done")
        return ChunkOutcome(status="cancelled" if job.status == "cancelled" else "skipped")
    jobs.mark_running(db=db, job_id=job.id, device=engines.device)
    try:
        model = model_by_id(db=db, model_id=job.model_id) if job.model_id else None
        if model is None:
            raise VicapError(f"job {job.id} has no model")
        engine = engines.get(model, job.params.get("engine") or "torch")
    except VicapError as exc:
        return _fail_job(db, job.id, chunk_id, f"cannot load model: {exc}")
    except Exception as exc:  # noqa: BLE001 - a broken artifact must fail the job, not loop forever
        log.exception("loading model for job %d", job.id)
        return _fail_job(db, job.id, chunk_id, f"cannot load model: {type(exc).__name__}: {exc}")

    todo = _uncaptioned(db, job.id, chunk.image_ids)
    batch_size = int(job.params.get("batch_size") or 8)
    totals = {"ok": 0, "failed": 0, "read": 0.0, "infer": 0.0, "write": 0.0}
    for batch in _batches(todo, batch_size):
        if _job_status(db, job.id) == "cancelled":
            _close_chunk(db, chunk_id, "cancelled")
            return ChunkOutcome(
                "cancelled", totals["ok"], totals["failed"], totals["read"], totals["infer"], totals["write"]
            )
        results, read_s, infer_s = caption_batch(engine, batch)
        started = time.perf_counter()
        n_ok, n_failed = write_results(
            db=db, job_id=job.id, model_id=model.id, engine_name=engine.name, results=results
        )
        totals["write"] += time.perf_counter() - started
        totals["ok"] += n_ok
        totals["failed"] += n_failed
        totals["read"] += read_s
        totals["infer"] += infer_s
        jobs.touch_chunk(db=db, chunk_id=chunk_id)
        if heartbeat is not None:
            heartbeat()
    _close_chunk(db, chunk_id, "done", timings=(totals["read"], totals["infer"], totals["write"]))
    finish_job_if_complete(db=db, job_id=job.id)
    log.info(
        "chunk %d of job %d: %d ok, %d failed; read %.2fs infer %.2fs write %.2fs",
        chunk_id,
        job.id,
        totals["ok"],
        totals["failed"],
        totals["read"],
        totals["infer"],
        totals["write"],
    )
    return ChunkOutcome(
        "done", int(totals["ok"]), int(totals["failed"]), totals["read"], totals["infer"], totals["write"]
    )


def caption_batch(engine: Any, batch: Sequence[tuple[int, str]]) -> tuple[list[CaptionResult], float, float]:
    """Decode the batch's images (bad ones become error results), then caption the good ones."""
    from vicap_jobs.data.images import load_rgb

    started = time.perf_counter()
    results: dict[int, CaptionResult] = {}
    good: list[tuple[int, Any]] = []
    for image_id, path in batch:
        try:
            good.append((image_id, load_rgb(Path(path))))
        except VicapError as exc:
            results[image_id] = CaptionResult(image_id, None, None, str(exc))
        except Exception as exc:  # noqa: BLE001 - never let one file fail the chunk
            results[image_id] = CaptionResult(image_id, None, None, f"cannot read image: {type(exc).__name__}: {exc}")
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    if good:
        try:
            texts = engine.caption([image for _, image in good])
        except Exception as exc:  # noqa: BLE001 - recorded per image; the job goes on
            log.exception("engine failed on a batch of %d images", len(good))
            texts = [None] * len(good)
            reason = f"engine error: {type(exc).__name__}: {exc}"
        else:
            reason = None
        elapsed_ms = (time.perf_counter() - started) * 1000 / len(good)
        for (image_id, _), text in zip(good, texts, strict=True):
            results[image_id] = CaptionResult(image_id, text, elapsed_ms if text is not None else None, reason)
    infer_s = time.perf_counter() - started
    return [results[image_id] for image_id, _ in batch], read_s, infer_s


def finish_job_if_complete(*, db: Engine, job_id: int) -> str | None:
    """When no chunk of a caption job is left queued/running, end it: succeeded, or failed if no image succeeded."""
    with session_scope(db) as session:
        open_chunks = session.scalar(
            select(func.count())
            .select_from(JobChunk)
            .where(JobChunk.job_id == job_id, JobChunk.status.in_(("queued", "running")))
        )
        if open_chunks:
            return None
        job = session.get(Job, job_id)
        if job is None or job.status not in ("queued", "running") or job.kind != "caption":
            return None  # evaluate jobs finish after scoring, in services.evaluation
        n_ok = session.scalar(
            select(func.count()).select_from(Caption).where(Caption.job_id == job_id, Caption.status == "ok")
        )
    if n_ok == 0 and job.failed > 0:
        summary = jobs.job_summary(db=db, job_id=job_id)
        reason = summary.errors_by_reason[0][0] if summary.errors_by_reason else "unknown"
        jobs.finish_job(
            db=db, job_id=job_id, status="failed", error=f"all {job.failed} images failed; most common reason: {reason}"
        )
        return "failed"
    jobs.finish_job(db=db, job_id=job_id, status="succeeded")
    return "succeeded"


def _uncaptioned(db: Engine, job_id: int, image_ids: Sequence[int]) -> list[tuple[int, str]]:
    """(image id, path) of the chunk's images without a caption row for this job, in chunk order."""
    with session_scope(db) as session:
        done = set(
            session.scalars(select(Caption.image_id).where(Caption.job_id == job_id, Caption.image_id.in_(image_ids)))
        )
        paths = dict(session.execute(select(Image.id, Image.path).where(Image.id.in_(image_ids))).all())
    return [(i, paths[i]) for i in image_ids if i not in done and i in paths]


def _batches(items: Sequence[tuple[int, str]], size: int) -> Iterator[Sequence[tuple[int, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _job_status(db: Engine, job_id: int) -> str | None:
    with session_scope(db) as session:
        return session.scalar(select(Job.status).where(Job.id == job_id))


def _close_chunk(db: Engine, chunk_id: int, status: str, timings: tuple[float, float, float] | None = None) -> None:
    values: dict[str, Any] = {"status": status, "finished_at": utcnow()}
    if timings:
        values.update(read_s=timings[0], infer_s=timings[1], write_s=timings[2])
    with session_scope(db) as session:
        session.execute(update(JobChunk).where(JobChunk.id == chunk_id, JobChunk.status == "running").values(**values))


def _fail_job(db: Engine, job_id: int, chunk_id: int, reason: str) -> ChunkOutcome:
    with session_scope(db) as session:
        session.execute(
            update(JobChunk)
            .where(JobChunk.job_id == job_id, JobChunk.status.in_(("queued", "running")))
            .values(status="failed", error=reason, finished_at=utcnow())
        )
    jobs.finish_job(db=db, job_id=job_id, status="failed", error=reason)
    return ChunkOutcome(status="failed")
