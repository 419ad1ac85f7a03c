"""Plain records passed from the store to trainers and evaluators (no ORM objects)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CaptionSample:
    """One image with its reference captions (as given, not normalized).

    ``image_path`` is a local ``Path`` or an object storage URL kept as ``str`` (``Path`` would fold
    ``s3://`` into ``s3:/``); ``data.images.load_rgb`` reads both.
    """

    image_id: int
    image_path: Path | str
    captions: tuple[str, ...]
