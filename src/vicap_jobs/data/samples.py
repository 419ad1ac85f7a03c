"""Plain records passed from the store to trainers and evaluators (no ORM objects)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CaptionSample:
    """One image with its reference captions (as given, not normalized)."""

    image_id: int
    image_path: Path
    captions: tuple[str, ...]
