"""A spy engine for the chunk runner: it records which images reach it, by image width.

Images made by ``tests.store_helpers.add_images`` are ``IMAGE_WIDTH + i`` pixels wide, so the spy
maps each decoded image back to its id without any model. ``SpyEngines`` stands in for a worker's
``EngineProvider`` (``device`` and ``get(model_id, engine_name)``), so no checkpoint is ever loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image as PILImage

from tests.store_helpers import IMAGE_WIDTH


class SpyEngine:
    """Captions each image with its own id; records the ids of every batch it is given."""

    name = "spy"

    def __init__(self, image_ids: Sequence[int]) -> None:
        self.ids_by_width = {IMAGE_WIDTH + i: image_id for i, image_id in enumerate(image_ids)}
        self.batches: list[list[int]] = []
        #: batch number (from 1) → how many captions to leave out of that batch's answer (a broken engine)
        self.short_by: dict[int, int] = {}
        #: called with the number of batches seen so far, inside the engine call (between the runner's batches)
        self.on_batch: Callable[[int], None] = lambda n: None

    def caption(self, images: Sequence[PILImage.Image]) -> list[str]:
        batch = [self.ids_by_width[image.width] for image in images]
        self.batches.append(batch)
        self.on_batch(len(self.batches))
        answer = [caption_of(image_id) for image_id in batch]
        return answer[: len(answer) - self.short_by.get(len(self.batches), 0)]


def caption_of(image_id: int) -> str:
    return f"ảnh số {image_id}"


class SpyEngines:
    """An ``EngineProvider`` that hands out the spy (or raises ``fail`` when asked for it)."""

    def __init__(self, engine: SpyEngine, *, device: str = "cpu", fail: Exception | None = None) -> None:
        self.engine = engine
        self.device = device
        self.fail = fail
        self.asked: list[tuple[int, str]] = []

    def get(self, model_id: int, engine_name: str) -> SpyEngine:
        self.asked.append((model_id, engine_name))
        if self.fail is not None:
            raise self.fail
        return self.engine
