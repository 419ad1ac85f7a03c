"""Captions to look at: a job's captions a page at a time, thumbnails of stored images, a model's samples.

The web view shows these; they read the same tables as ``captions export``. Thumbnails are
made only for image ids in the store (the path comes from the ``images`` row, never from a
request), decoded with the pipeline's safe decoder and cached on disk by content hash and
size, so a photo shown in a hundred galleries is resized once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from vicap_jobs.data.images import load_rgb
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.status import CaptionStatus, JobStatus
from vicap_jobs.db.tables import Caption, Image, Job, ReferenceCaption
from vicap_jobs.errors import InputError, NotFoundError
from vicap_jobs.settings import get_settings
from vicap_jobs.storage.locations import is_url

THUMBNAIL_SIZES = (160, 320)
"""Longest side, in pixels, of the thumbnails served (gallery, and the larger one for model samples)."""
STATUS_FILTERS = ("all", CaptionStatus.OK, CaptionStatus.ERROR)


@dataclass(frozen=True)
class GalleryItem:
    """One image of a job with its caption (or its error)."""

    image_id: int
    file_name: str
    status: str
    caption: str | None
    error: str | None
    engine: str
    latency_ms: float | None


@dataclass(frozen=True)
class GalleryPage:
    """One page of a job's captions, newest filter applied; ``matching`` counts every page."""

    job_id: int
    status: str
    page: int
    per_page: int
    matching: int
    items: list[GalleryItem] = field(default_factory=list)

    @property
    def pages(self) -> int:
        return max(1, -(-self.matching // self.per_page))


def job_gallery(*, db: Engine, job_id: int, status: str = "all", page: int = 1, per_page: int = 48) -> GalleryPage:
    """Page ``page`` (from 1) of job ``job_id``'s captions in image order, only ``ok`` or ``error`` ones if asked."""
    if status not in STATUS_FILTERS:
        raise InputError(f"status must be one of {', '.join(map(str, STATUS_FILTERS))}; got {status!r}")
    page, per_page = max(1, page), min(max(1, per_page), 500)
    with session_scope(db) as session:
        if session.get(Job, job_id) is None:
            raise NotFoundError(f"no job with id {job_id}")
        where = [Caption.job_id == job_id]
        if status != "all":
            where.append(Caption.status == status)
        matching = session.scalar(select(func.count()).select_from(Caption).where(*where)) or 0
        rows = session.execute(
            select(
                Caption.image_id,
                Image.file_name,
                Caption.status,
                Caption.text,
                Caption.error,
                Caption.engine,
                Caption.latency_ms,
            )
            .join(Image, Image.id == Caption.image_id)
            .where(*where)
            .order_by(Caption.image_id)
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).all()
    items = [GalleryItem(*row) for row in rows]
    return GalleryPage(job_id=job_id, status=status, page=page, per_page=per_page, matching=matching, items=items)


def thumbnail_file(*, db: Engine, image_id: int, size: int = THUMBNAIL_SIZES[0], cache_dir: Path | None = None) -> Path:
    """A JPEG of stored image ``image_id``, its longest side at most ``size``; made once, then read from the cache.

    Raises NotFoundError for an id that is not in the store, ImageError when the file can
    no longer be decoded (missing, truncated, not an image).
    """
    if size not in THUMBNAIL_SIZES:
        raise InputError(f"thumbnail size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}")
    with session_scope(db) as session:
        row = session.execute(select(Image.path, Image.sha256).where(Image.id == image_id)).first()
    if row is None:
        raise NotFoundError(f"no image with id {image_id}")
    location, digest = str(row[0]), row[1]
    key = digest or f"id{image_id}-{_version(location)}"
    cached = (cache_dir or get_settings().cache_dir) / "thumbnails" / f"{key}-{size}.jpg"
    if cached.exists():
        return cached
    image = load_rgb(location)
    image.thumbnail((size, size))
    cached.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            image.save(out, format="JPEG", quality=82)
        os.replace(temporary, cached)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return cached


def _version(location: str) -> str:
    """What tells one content of an unhashed image from the next: a local file's mtime; an object's URL.

    An object is not asked for its ETag on every page view: its thumbnail is made once per URL.
    """
    if is_url(location):
        return hashlib.sha1(location.encode(), usedforsecurity=False).hexdigest()[:16]
    try:
        return str(Path(location).stat().st_mtime_ns)
    except OSError:
        return "0"


@dataclass(frozen=True)
class SampleImage:
    """A data set image the model captioned, with the data set's reference captions."""

    image_id: int
    file_name: str
    caption: str | None
    references: list[str]


def model_samples(*, db: Engine, model_id: int, limit: int = 6) -> list[SampleImage]:
    """The first ``limit`` images of the model's newest succeeded evaluate job, with references."""
    with session_scope(db) as session:
        job_id = session.scalar(
            select(Job.id)
            .where(Job.model_id == model_id, Job.kind == "evaluate", Job.status == JobStatus.SUCCEEDED)
            .order_by(Job.id.desc())
            .limit(1)
        )
        if job_id is None:
            return []
        rows = session.execute(
            select(Caption.image_id, Image.file_name, Caption.text)
            .join(Image, Image.id == Caption.image_id)
            .where(Caption.job_id == job_id, Caption.status == CaptionStatus.OK)
            .order_by(Caption.image_id)
            .limit(limit)
        ).all()
        references = references_of(session=session, image_ids=[row[0] for row in rows])
    return [SampleImage(row[0], row[1], row[2], references.get(row[0], [])) for row in rows]


def references_of(*, session: Session, image_ids: list[int]) -> dict[int, list[str]]:
    """Reference captions per image id, in their given order (images without any are absent)."""
    found: dict[int, list[str]] = {}
    if not image_ids:
        return found
    for image_id, text in session.execute(
        select(ReferenceCaption.image_id, ReferenceCaption.text)
        .where(ReferenceCaption.image_id.in_(image_ids))
        .order_by(ReferenceCaption.image_id, ReferenceCaption.position)
    ):
        found.setdefault(image_id, []).append(text)
    return found
