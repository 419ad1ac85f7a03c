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
import hashlib
import logging
import os
import time
import unicodedata
import uuid
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
    """The fsspec file system of ``url`` and the path within it; a one-line InputError for an unknown scheme.

    One file system per scheme, process and storage environment: fsspec's own instance cache keys
    on the constructor's arguments only, so a process whose ``AWS_ENDPOINT_URL`` (or credentials)
    changed kept talking to the first endpoint — a write meant for one server silently went to
    another, which auto-created the bucket. The environment's digest is part of the key instead
    (only the digest is kept; the values are never stored or shown).
    """
    if "::" in url:  # a chained URL (simplecache::s3://…): fsspec builds the whole chain
        return _open_filesystem(url, cached=True)
    key = (scheme(url), os.getpid(), _environment_digest())
    found = _FILESYSTEMS.get(key)
    if found is not None:
        return found, found._strip_protocol(url)
    fs, path = _open_filesystem(url, cached=False)
    _FILESYSTEMS[key] = fs
    return fs, path


#: (scheme, process id, digest of the storage environment) → its file system; see :func:`filesystem`.
_FILESYSTEMS: dict[tuple[str, int, str], fsspec.AbstractFileSystem] = {}
#: Environment variables through which the storage libraries are configured (endpoints, keys, retries).
_STORAGE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCSFS_", "AZURE_", "FSSPEC_")


def _open_filesystem(url: str, *, cached: bool) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return url_to_fs(url) if cached else url_to_fs(url, skip_instance_cache=True)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open {scheme(url)}:// locations: {exc}") from None


def _environment_digest() -> str:
    """A digest of the storage libraries' environment variables (names and values), so a change is noticed."""
    digest = hashlib.sha256()
    for name in sorted(os.environ):
        if name.startswith(_STORAGE_ENV_PREFIXES):
            digest.update(f"{name}\0{os.environ[name]}\0".encode(errors="surrogateescape"))
    return digest.hexdigest()


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
    """The bytes of one object; ObjectError for that object's own problems, StorageUnavailable for the storage's.

    One request per object: a GET of the first ``max_bytes + 1`` bytes (a range), so an object over
    the cap is refused without holding more than that. Opening a file object instead cost a HEAD and
    a GET: 5.4-6.1 ms against 2.9-3.4 ms per 90 KB object from SeaweedFS on loopback (2 shared cores,
    2026-11-30), and twice the requests an S3 bill counts. Only an empty answer costs a second
    request, to tell an empty object from a "folder" some servers (SeaweedFS) serve as one.
    """
    fs, path = filesystem(url)

    def fetch() -> bytes:
        try:
            data = bytes(fs.cat_file(path, start=0, end=max_bytes + 1))
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
            raise
        except OSError as exc:
            if not _is_unsatisfiable_range(exc):
                raise
            data = b""  # S3 answers 416 to a range of an empty object
        if not data and fs.info(path).get("type") == "directory":
            raise IsADirectoryError(path)
        if len(data) > max_bytes:
            raise ObjectError(f"object is over the {_megabytes(max_bytes)} limit")
        return data

    try:
        return with_retries(f"reading {url}", fetch)
    except FileNotFoundError:
        raise ObjectError("object not found") from None
    except PermissionError:
        raise ObjectError("access denied to object") from None
    except (IsADirectoryError, NotADirectoryError):
        raise ObjectError("not an object (a prefix/folder)") from None


def _is_unsatisfiable_range(exc: OSError) -> bool:
    """The answer to a range request on an empty object (HTTP 416, "InvalidRange")."""
    text = str(exc).lower()
    return (exc.errno == errno.EINVAL and "range" in text) or "invalidrange" in text or "416" in text


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


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
        _write_local(local_path(location), data)
        return
    text = str(location)
    fs, path = filesystem(text)
    with_retries(f"writing {text}", lambda: fs.pipe_file(path, data))


def _write_local(target: Path, data: bytes) -> None:
    """Write a sibling temporary file (unique per writer), flush it to disk, rename it onto ``target``.

    On any failure the temporary file is removed, so a failed write leaves neither a partial
    ``target`` nor a ``.part`` file behind (a target that is a folder used to leave its ``.part``).
    """
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        with temporary.open("xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
    """Copy the object ``url`` to the local file ``target`` (retried while the storage is unreachable).

    The object lands in a sibling temporary file renamed onto ``target`` once complete, so a download
    cut off by the storage going away never leaves a truncated ``target`` (nor its temporary file).
    """
    fs, path = filesystem(url)
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        with_retries(f"downloading {url}", lambda: fs.get_file(path, str(temporary)))
        os.replace(temporary, target)
    except FileNotFoundError:
        raise ObjectError(f"object not found: {url}") from None
    finally:
        temporary.unlink(missing_ok=True)


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
