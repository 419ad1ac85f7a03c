"""Objects in storage through fsspec: list a prefix's images, read one with retries, write one.

Errors come in two kinds, because the pipeline treats them differently:

* about one object (missing, access denied, a "folder", over the size cap): :class:`ObjectError`,
  an ``ImageError`` — recorded on that image's caption row; the chunk goes on;
* about the storage (connection refused or reset, timeouts, 5xx after the library's own retries):
  retried here with exponential backoff (``VICAP_STORAGE_RETRIES`` attempts, 0.5 s doubling to
  8 s), then :class:`StorageUnavailable` — the chunk stops and goes back to the queue like a dead
  worker's (``jobs.chunks.release_chunk``), so nothing is recorded as a photo's fault that was the
  network's.

A file system object per protocol and process comes from fsspec's own instance cache (it is safe
after a fork: fsspec resets its event loop in the child).
"""

from __future__ import annotations

import errno
import logging
import os
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.core import url_to_fs

from vicap_jobs.errors import ImageError, InputError, VicapError
from vicap_jobs.settings import get_settings
from vicap_jobs.storage.locations import is_url, local_path, scheme

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest object read into memory as one photo: anything bigger is not a photo a captioner needs.
MAX_OBJECT_BYTES = 256 * 1024 * 1024
#: errno values of answers that retrying cannot change (s3fs maps S3 error codes to them: InvalidBucketName,
#: InvalidArgument → EINVAL).
_REFUSED = frozenset({errno.EINVAL, errno.ENAMETOOLONG, errno.EROFS})
#: The first pause between attempts of a storage call, and the longest.
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0


class StorageUnavailable(VicapError):
    """Object storage could not be reached after retries: the work should be retried later, elsewhere."""


class ObjectError(ImageError):
    """One object cannot be read (missing, denied, too large); the message says which and why."""


def _retries() -> int:
    return get_settings().storage_retries


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system of ``url`` and the path within it; a one-line InputError for an unknown scheme."""
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open {scheme(url)}:// locations: {exc}") from None


def with_retries(what: str, call: Callable[[], T], *, retries: int | None = None) -> T:
    """``call()``, retried with backoff while the storage is unreachable; object errors pass through at once."""
    attempts = retries or _retries()
    pause = FIRST_BACKOFF_S
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, VicapError):
            raise
        except Exception as exc:  # noqa: BLE001 - connection-level failures come as many library types
            if isinstance(exc, OSError) and exc.errno in _REFUSED:  # the storage said no: asking again will not help
                raise InputError(f"object storage refused {what}: {_first_line(exc)}") from None
            if attempt == attempts:
                raise StorageUnavailable(
                    f"object storage unreachable while {what}: {type(exc).__name__}: {_first_line(exc)} "
                    f"(after {attempts} attempts)"
                ) from exc
            log.warning("%s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, _first_line(exc), pause)
            time.sleep(pause)
            pause = min(pause * 2, MAX_BACKOFF_S)
    raise AssertionError("unreachable")


def read_object(url: str, *, max_bytes: int = MAX_OBJECT_BYTES) -> bytes:
    """The bytes of one object; ObjectError for that object's own problems, StorageUnavailable for the storage's."""
    fs, path = filesystem(url)

    def fetch() -> bytes:
        with fs.open(path, "rb") as handle:
            size = getattr(handle, "size", None)
            if size is not None and size > max_bytes:
                raise ObjectError(f"object is {size / 1e6:.0f} MB, over the {max_bytes / 1e6:.0f} MB limit")
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ObjectError(f"object is over the {max_bytes / 1e6:.0f} MB limit")
        return bytes(data)

    try:
        return with_retries(f"reading {url}", fetch)
    except FileNotFoundError:
        raise ObjectError("object not found") from None
    except PermissionError:
        raise ObjectError("access denied to object") from None
    except (IsADirectoryError, NotADirectoryError):
        raise ObjectError("not an object (a prefix/folder)") from None


def list_image_objects(url: str, *, recursive: bool, is_image_name: Callable[[str], bool]) -> list[str]:
    """URLs of the image objects under the prefix ``url``, sorted by NFC key (then raw key).

    Hidden names (a path part starting with ".") are left out, like local hidden files; zero-byte
    objects are kept (their caption row says "empty file"); "folder" marker objects are not images.
    Raises InputError when the prefix holds nothing at all (a typo in a bucket or prefix).
    """
    fs, root = filesystem(url)
    root = root.rstrip("/")

    def find() -> dict[str, Any]:
        found: dict[str, Any] = fs.find(root, maxdepth=None if recursive else 1, withdirs=False, detail=True)
        return found

    try:
        entries = with_retries(f"listing {url}", find)
    except FileNotFoundError:
        raise InputError(f"nothing found at {url}") from None
    except PermissionError:
        raise InputError(f"access denied listing {url}") from None
    keys = []
    for key, info in entries.items():
        relative = key[len(root) :].lstrip("/") if key.startswith(root) else key
        if not relative or any(part.startswith(".") for part in relative.split("/")):
            continue
        if info.get("type", "file") != "file" or not is_image_name(relative.rsplit("/", 1)[-1]):
            continue
        keys.append(key)
    if not entries:
        raise InputError(f"nothing found at {url}")
    keys.sort(key=lambda k: (unicodedata.normalize("NFC", k), k))
    return [_unstrip(fs, key) for key in keys]


def exists(location: str) -> bool:
    """Whether a file or object is at ``location``."""
    if not is_url(location):
        return local_path(location).exists()
    fs, path = filesystem(location)
    return bool(with_retries(f"checking {location}", lambda: fs.exists(path)))


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write ``data`` to a local path (a temporary file renamed into place) or an object (one PUT: all or nothing)."""
    if not is_url(location):
        target = local_path(location)
        temporary = target.with_name(f".{target.name}.part")
        temporary.write_bytes(data)
        os.replace(temporary, target)
        return
    text = str(location)
    fs, path = filesystem(text)
    with_retries(f"writing {text}", lambda: fs.pipe_file(path, data))


def upload_file(source: Path, url: str) -> None:
    """Copy a local file to ``url`` (retried while the storage is unreachable)."""
    fs, path = filesystem(url)
    with_retries(f"uploading {source.name} to {url}", lambda: fs.put_file(str(source), path))


def copy_object(source: str, target: str) -> None:
    """Copy the object ``source`` to ``target`` within one store (server-side where the store can); ObjectError if missing."""
    fs, source_path = filesystem(source)
    _, target_path = filesystem(target)
    try:
        with_retries(f"copying {source} to {target}", lambda: fs.copy(source_path, target_path))
    except FileNotFoundError:
        raise ObjectError(f"object not found: {source}") from None


def download_file(url: str, target: Path) -> None:
    """Copy the object ``url`` to the local file ``target`` (retried while the storage is unreachable)."""
    fs, path = filesystem(url)
    try:
        with_retries(f"downloading {url}", lambda: fs.get_file(path, str(target)))
    except FileNotFoundError:
        raise ObjectError(f"object not found: {url}") from None


def read_text(location: str | Path) -> str:
    """A small text file or object (annotations, manifests), as UTF-8."""
    if not is_url(location):
        return local_path(location).read_text(encoding="utf-8")
    fs, path = filesystem(str(location))
    try:
        data = with_retries(f"reading {location}", lambda: fs.cat_file(path))
    except FileNotFoundError:
        raise InputError(f"not found: {location}") from None
    return bytes(data).decode("utf-8")


def _unstrip(fs: fsspec.AbstractFileSystem, key: str) -> str:
    """The full URL of a key the file system returned without its protocol."""
    url: str = fs.unstrip_protocol(key)
    return url


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
