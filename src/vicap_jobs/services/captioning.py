"""Planning a bulk caption job: walk a folder, register its images, split them into chunks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, select

from vicap_jobs.data.folders import WalkReport, iter_image_files
from vicap_jobs.data.images import image_size, sha256_file
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Image
from vicap_jobs.errors import InputError
from vicap_jobs.jobs.chunks import create_chunks
from vicap_jobs.jobs.lifecycle import create_job
from vicap_jobs.jobs.params import CaptionParams
from vicap_jobs.jobs.queues import device_label
from vicap_jobs.services.models import engine_for_job, resolve_model

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class CaptionJobPlan:
    job_id: int
    chunk_ids: list[int]
    n_images: int
    skipped_dirs: int = 0


def register_folder_images(*, db: Engine, paths: list[Path]) -> list[int]:
    """Image ids for ad-hoc files (dataset_id NULL), inserting new ones with sha256 and size.

    A path seen before keeps its row; its hash and size are refreshed when the
    file changed. Unreadable files are registered anyway: their caption row will
    say why they failed.
    """
    ids: list[int] = []
    with session_scope(db) as session:
        existing = (
            {
                row.path: row
                for row in session.scalars(
                    select(Image).where(Image.dataset_id.is_(None), Image.path.in_([str(p) for p in paths]))
                )
            }
            if len(paths) <= 5000
            else {}
        )
        for path in paths:
            key = str(path)
            row = existing.get(key) or session.scalar(
                select(Image).where(Image.dataset_id.is_(None), Image.path == key)
            )
            digest = _safe(sha256_file, path)
            size = _safe(image_size, path)
            if row is None:
                row = Image(dataset_id=None, path=key, file_name=path.name, sha256=digest)
                session.add(row)
            else:
                row.sha256 = digest
            row.width, row.height = size if size else (None, None)
            session.flush()
            ids.append(row.id)
    return ids


def _safe(read: Callable[[Path], T], path: Path) -> T | None:
    """``read(path)``, or None when the file cannot be read (the runner records the real reason per image)."""
    try:
        return read(path)
    except Exception:  # noqa: BLE001 - the runner records the real reason per image
        return None


def create_caption_job(
    *,
    db: Engine,
    folder: Path,
    model: str | None,
    engine_name: str | None,
    recursive: bool,
    batch_size: int,
    chunk_size: int,
    gpu: int | None = None,
) -> CaptionJobPlan:
    """A queued ``caption`` job over every image file in ``folder``, split into chunks.

    ``model`` None picks the newest registered model; ``gpu`` pins the job to that GPU's worker.
    No Celery here: the caller publishes the job's chunks.
    """
    if batch_size <= 0:
        raise InputError("--batch-size must be positive")
    model_row = resolve_model(db=db, name=model)
    engine = engine_for_job(model_row, engine_name)
    report = WalkReport()
    paths = list(iter_image_files(Path(folder).expanduser().resolve(), recursive=recursive, report=report))
    if not paths:
        raise InputError(
            f"no image files (jpg, jpeg, png, webp, bmp, gif) in {folder}" + ("" if recursive else "; try --recursive")
        )
    image_ids = list(dict.fromkeys(register_folder_images(db=db, paths=paths)))
    params = CaptionParams(
        folder=str(folder),
        model=model_row.name,
        engine=engine,
        recursive=recursive,
        batch_size=batch_size,
        chunk_size=chunk_size,
        device=None if gpu is None else device_label(gpu),
        skipped_dirs=report.skipped_dirs,
    )
    with session_scope(db) as session:
        job_id = create_job(
            session=session, kind="caption", params=params, model_id=model_row.id, total=len(image_ids), gpu=gpu
        )
        chunk_ids = create_chunks(session=session, job_id=job_id, image_ids=image_ids, chunk_size=chunk_size)
    log.info("job %d: %d images in %d chunks", job_id, len(image_ids), len(chunk_ids))
    return CaptionJobPlan(job_id=job_id, chunk_ids=chunk_ids, n_images=len(image_ids), skipped_dirs=report.skipped_dirs)
