"""Planning a bulk caption job: walk a folder, register its images, split them into chunks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from vicap_jobs.data.folders import WalkReport, iter_image_files
from vicap_jobs.data.images import image_size, sha256_file
from vicap_jobs.db.base import utcnow
from vicap_jobs.db.bulk import insert_rows
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
    skipped_outside: int = 0


#: Files per upsert statement (``vicap_jobs.db.bulk``: one array per column on PostgreSQL,
#: multi-row VALUES pages on SQLite).
PAGE = 5000


def register_folder_images(*, db: Engine, paths: list[Path]) -> list[int]:
    """Image ids for ad-hoc files (dataset_id NULL), in the order of ``paths``, inserting new ones with sha256 and size.

    A path seen before keeps its row; its hash and size are refreshed (the file may have changed).
    Unreadable files are registered anyway: their caption row will say why they failed.

    One ``INSERT ... ON CONFLICT (path) WHERE dataset_id IS NULL DO UPDATE ... RETURNING id`` per
    page of files: no lookup first (a 5,000-path ``IN`` list on a freshly filled, not yet analysed
    PostgreSQL table was planned as a filter and took ~17 s a page), and a submit racing with
    another over the same folder gets the same rows. Row by row (a flush and a query per file) took
    142 s for 100,000 small files on PostgreSQL; this takes 9-15 s on 2 busy cores (bench/scale.py),
    the largest part reading each file's image header (3.7 s on a quiet machine) and SHA-256 (1.5 s).
    Hashing is not what costs, so it stays here rather than moving to the workers.
    """
    facts = {str(path): _facts(path) for path in paths}  # one row per distinct path, in order
    ids: dict[str, int] = {}
    with session_scope(db) as session:
        now = utcnow()
        rows = [{**row, "created_at": now} for row in facts.values()]
        for start in range(0, len(rows), PAGE):
            ids.update(_upsert_images(session, rows[start : start + PAGE]))
    return [ids[str(path)] for path in paths]


def _facts(path: Path) -> dict[str, Any]:
    """The ad-hoc image row of one file: its hash and displayed size, or None where it cannot be read."""
    size = _safe(image_size, path)
    width, height = size if size else (None, None)
    return {
        "dataset_id": None,
        "path": str(path),
        "file_name": path.name,
        "sha256": _safe(sha256_file, path),
        "width": width,
        "height": height,
    }


def _upsert_images(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert ad-hoc image rows or refresh the existing ones' hash and size; path → id of every row."""
    insert, parameters = insert_rows(session, Image, rows)
    statement = insert.on_conflict_do_update(
        index_elements=["path"],
        index_where=Image.dataset_id.is_(None),
        set_={"sha256": insert.excluded.sha256, "width": insert.excluded.width, "height": insert.excluded.height},
    ).returning(Image.id, Image.path)
    return {path: image_id for image_id, path in session.connection().execute(statement, parameters)}


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
    within: Sequence[Path] | None = None,
) -> CaptionJobPlan:
    """A queued ``caption`` job over every image file in ``folder``, split into chunks.

    ``model`` None picks the newest registered model; ``gpu`` pins the job to that GPU's worker.
    ``within`` (resolved folders; the web view's ``VICAP_WEB_ROOTS``): files whose real path,
    links followed, lies outside all of them are left out and counted, so a link inside an
    allowed folder cannot reach a file elsewhere. No Celery here: the caller publishes the job's chunks.
    """
    if batch_size <= 0:
        raise InputError("--batch-size must be positive")
    model_row = resolve_model(db=db, name=model)
    engine = engine_for_job(model_row, engine_name)
    report = WalkReport()
    paths = list(iter_image_files(Path(folder).expanduser().resolve(), recursive=recursive, report=report))
    found = len(paths)
    if within is not None:
        paths = [path for path in paths if is_within(path, within)]
    if not paths and found:
        raise InputError(f"every image file in {folder} is a link to a file outside the allowed folders")
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
    return CaptionJobPlan(
        job_id=job_id,
        chunk_ids=chunk_ids,
        n_images=len(image_ids),
        skipped_dirs=report.skipped_dirs,
        skipped_outside=found - len(paths),
    )


def is_within(path: Path, roots: Sequence[Path]) -> bool:
    """True when ``path``'s real location (every link followed) lies inside one of the resolved ``roots``."""
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a link loop, unreadable
        return False
    return any(real == root or real.is_relative_to(root) for root in roots)
