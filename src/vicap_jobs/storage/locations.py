"""Locations: a local path or an object storage URL, told apart without importing fsspec."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

#: ``scheme://`` at the start; one letter (``C://``) is a Windows drive, not a URL; ``file://`` is a local path.
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")


def is_url(location: str | Path) -> bool:
    """True for an object storage URL (``s3://bucket/key``, ``gs://…``, ``memory://…``); False for a local path."""
    if isinstance(location, Path):
        return False
    match = _URL.match(location)
    return match is not None and match.group(1).lower() != "file"


def scheme(location: str) -> str:
    """The URL's scheme, lower-cased (``s3``); ``""`` for a local path."""
    match = _URL.match(location)
    return match.group(1).lower() if match and is_url(location) else ""


def local_path(location: str | Path) -> Path:
    """A local location as a Path (``file://`` stripped); raises ValueError for an object storage URL."""
    if is_url(location):
        raise ValueError(f"{location} is not a local path")
    text = str(location)
    return Path(text[len("file://") :] if text.lower().startswith("file://") else text)


def join(base: str, *parts: str) -> str:
    """``base`` with ``parts`` appended by ``/`` (URLs) — never with the OS separator, never dropping the scheme."""
    if not is_url(base):
        return str(Path(base).joinpath(*parts))
    head = base.rstrip("/")
    tail = posixpath.join(*(part.strip("/") for part in parts)) if parts else ""
    return f"{head}/{tail}" if tail else head


def name_of(location: str | Path) -> str:
    """The last part of a path or URL (the file name), without a trailing slash."""
    text = str(location).rstrip("/")
    return text.rsplit("/", 1)[-1] if is_url(text) else Path(text).name


def as_location(location: str | Path) -> str:
    """What the store records: a URL as given (one trailing slash removed), a local path as its text."""
    return str(location).rstrip("/") if is_url(location) else str(location)
