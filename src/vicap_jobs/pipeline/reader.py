"""The chunk runner's reader: a chunk's photos decoded, batch by batch, ahead of the engine.

Local files are read one by one; object storage URLs are fetched ``VICAP_STORAGE_CONCURRENCY`` at a
time (each request answers in milliseconds, so one at a time would starve the engine). A hostile or
missing photo becomes an error result, never an exception; unreachable storage raises
``StorageUnavailable`` (nobody's photo's fault: the runner sends the chunk back to the queue).
Perceptual hashes of the photos asked for are computed here, on the decoded images.

Measured (bench/object_store.py, 2 busy cores, AMD EPYC, a 7 ms-a-photo model): 8 fetches at once
were 1.08-1.23x one at a time; read-ahead gained nothing there (no idle core for its thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image as PILImage

from vicap_jobs.data.images import load_rgb
from vicap_jobs.data.phash import perceptual_hash
from vicap_jobs.errors import VicapError
from vicap_jobs.jobs.writer import CaptionResult
from vicap_jobs.storage.locations import is_url
from vicap_jobs.storage.objects import StorageUnavailable

log = logging.getLogger(__name__)


@dataclass
class ReadBatch:
    """A batch's files decoded: the good images in batch order, error results for the bad ones, and the seconds.

    ``hashes``: the perceptual hashes of the decoded images that were asked for (image id → 64 hex digits).
    """

    good: list[tuple[int, PILImage.Image]]
    errors: dict[int, CaptionResult]
    seconds: float
    hashes: dict[int, str] = field(default_factory=dict)


def read_batch(
    batch: Sequence[tuple[int, str]], hash_ids: Collection[int] = (), *, fetcher: Executor | None = None
) -> ReadBatch:
    """Decode the batch's images; an unreadable or hostile file becomes an error result, never an exception.

    The images listed in ``hash_ids`` that decode are also given their perceptual hash. With a
    ``fetcher`` (a thread pool), the batch's objects are fetched and decoded that many at a time:
    object storage answers each request in milliseconds, so one at a time would starve the engine.
    Raises StorageUnavailable when object storage cannot be reached (not the photo's fault).
    """
    started = time.perf_counter()
    errors: dict[int, CaptionResult] = {}
    good: list[tuple[int, PILImage.Image]] = []
    hashes: dict[int, str] = {}
    locations = [location for _, location in batch]
    decoded = fetcher.map(_decode_one, locations) if fetcher is not None else map(_decode_one, locations)
    for (image_id, _), image in zip(batch, decoded, strict=True):
        if isinstance(image, str):
            errors[image_id] = CaptionResult(image_id, None, None, image)
            continue
        good.append((image_id, image))
        if image_id in hash_ids:
            try:
                hashes[image_id] = perceptual_hash(image)
            except Exception:  # noqa: BLE001 - a hash is a bonus: the image is still captioned
                log.exception("perceptual hash of image %d", image_id)
    return ReadBatch(good, errors, time.perf_counter() - started, hashes)


def _decode_one(location: str) -> PILImage.Image | str:
    """One photo decoded, or the reason it cannot be (a string); StorageUnavailable passes through."""
    try:
        return load_rgb(location)
    except StorageUnavailable:
        raise
    except VicapError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - never let one file fail the chunk
        return f"cannot read image: {type(exc).__name__}: {exc}"


class BatchReader:
    """The chunk's batches decoded ``depth`` batches ahead of the engine, in a thread (``VICAP_READ_AHEAD``).

    Pillow's decoders and network reads release the GIL, and on a GPU worker the CPU is otherwise
    idle during inference. ``depth`` batches ahead at most: memory stays flat. Depth 0 reads each
    batch when the engine asks for it. Batches that hold object storage URLs are fetched
    ``concurrency`` objects at a time (``VICAP_STORAGE_CONCURRENCY``); local files are read one by one.
    """

    def __init__(
        self, batches: Sequence[Sequence[tuple[int, str]]], hash_ids: Collection[int], depth: int, concurrency: int
    ) -> None:
        self.batches, self.hash_ids, self.depth = batches, hash_ids, depth
        remote = any(is_url(location) for batch in batches for _, location in batch)
        self.fetcher = ThreadPoolExecutor(concurrency, thread_name_prefix="vicap-fetch") if remote else None
        self.ahead = ThreadPoolExecutor(1, thread_name_prefix="vicap-read-ahead") if depth > 0 else None
        self.pending: dict[int, Future[ReadBatch]] = {}

    def __enter__(self) -> BatchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for executor in (self.ahead, self.fetcher):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    def read(self, index: int) -> ReadBatch:
        """Batch ``index`` decoded; the next ``depth`` batches are started before this one is returned."""
        if self.ahead is None:
            return self._read(index)
        for ahead in range(index, min(index + self.depth + 1, len(self.batches))):
            if ahead not in self.pending:
                self.pending[ahead] = self.ahead.submit(self._read, ahead)
        return self.pending.pop(index).result()

    def _read(self, index: int) -> ReadBatch:
        return read_batch(self.batches[index], self.hash_ids, fetcher=self.fetcher)
