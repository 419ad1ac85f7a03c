"""One uploaded photo, captioned at once: the web view's "try it" and ``POST /api/caption``.

The bytes go through the pipeline's own safe decoder (``data.images.load_rgb``: regular
files only, a pixel cap against decompression bombs, first frame, EXIF orientation, RGB),
after two cheaper checks of our own: a byte cap, and a pixel cap read from the header
before anything is decoded. The engines live in one ``EngineCache`` per process, as in a
worker, behind a lock (an engine is not safe to call from two request threads at once).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import Engine

from vicap_jobs.data.images import image_size, load_rgb
from vicap_jobs.errors import ImageError, InputError, UploadTooLargeError
from vicap_jobs.services.model_engines import EngineCache
from vicap_jobs.services.models import resolve_engine_name, resolve_model


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class UploadCaption:
    """The caption of one uploaded photo and how it was made."""

    caption: str
    model: str
    engine: str
    width: int
    height: int
    milliseconds: float


def decode_upload(data: bytes, *, limits: UploadLimits, suffix: str = "") -> PILImage.Image:
    """The uploaded bytes as an RGB image; ImageError (one readable line) for anything else."""
    if not data:
        raise ImageError("the upload is empty")
    if len(data) > limits.max_bytes:
        raise UploadTooLargeError(too_large_message(len(data), limits.max_bytes))
    handle, name = tempfile.mkstemp(suffix=suffix if suffix.isascii() and len(suffix) <= 8 else "")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        size = image_size(Path(name))
        if size is not None and size[0] * size[1] > limits.max_pixels:
            raise ImageError(
                f"the photo is {size[0]}×{size[1]} pixels; the limit is {limits.max_pixels / 1e6:.0f} megapixels"
            )
        return load_rgb(Path(name))
    finally:
        os.unlink(name)


def too_large_message(n_bytes: int, max_bytes: int) -> str:
    return f"the photo is over {n_bytes / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB (VICAP_WEB_MAX_UPLOAD_MB)"


class UploadCaptioner:
    """Captions single photos with any registered model, loading each (model, engine) once per process."""

    def __init__(self, *, db: Engine, limits: UploadLimits, device: str = "cpu", threads: int | None = None) -> None:
        self.db = db
        self.limits = limits
        self._engines = EngineCache(db=db, device=device, threads=threads)
        self._lock = threading.Lock()

    def caption(self, data: bytes, *, model: str | None, engine: str | None, suffix: str = "") -> UploadCaption:
        """Decode ``data`` safely, then caption it with ``model`` (newest if None) and ``engine`` (measured default if None)."""
        image = decode_upload(data, limits=self.limits, suffix=suffix)
        model_row = resolve_model(db=self.db, name=model or None)
        if engine:
            resolve_engine_name(model_row, engine)  # an engine the family lacks, or an export the model lacks: one line
        with self._lock:
            loaded = self._engines.get(model_row.id, engine or None)
            start = time.perf_counter()
            captions = loaded.caption([image])
            elapsed = (time.perf_counter() - start) * 1000
        if not captions:
            raise InputError("the engine returned no caption")
        return UploadCaption(
            caption=captions[0],
            model=model_row.name,
            engine=loaded.name,
            width=image.width,
            height=image.height,
            milliseconds=elapsed,
        )
