"""Find the image files in a user's folder, deterministically and without getting stuck.

Symlinks to files and folders are followed, but each real folder (identified by device
and inode, i.e. its resolved identity, not its spelling) is listed once, so a link loop
(`sub/loop -> ..`) or an alias of a folder already walked ends the descent.
Unreadable sub-folders are skipped with a warning; the walk goes on.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vicap_jobs.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
"""Suffixes we caption, compared lower-cased (so .JPG and .Jpeg count)."""


@dataclass
class WalkReport:
    """What a walk left out, for a job's log: unreadable folders and repeated real folders."""

    unreadable_dirs: list[tuple[Path, str]] = field(default_factory=list)
    repeated_dirs: list[Path] = field(default_factory=list)

    @property
    def skipped_dirs(self) -> int:
        """How many folders were not listed, for whatever reason."""
        return len(self.unreadable_dirs) + len(self.repeated_dirs)


def is_image_name(name: str) -> bool:
    """True when the file name ends in one of IMAGE_SUFFIXES, in any letter case."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def iter_image_files(root: Path, *, recursive: bool, report: WalkReport | None = None) -> Iterator[Path]:
    """Yield the image files under `root` in a stable order (sorted by name, folder by folder).

    Paths are `root` joined with names exactly as they are on disk (NFD names stay NFD),
    so they can be opened. Hidden entries (names starting with ".") are skipped, which
    also drops macOS "._x.jpg" resource forks. Raises InputError at once (not on first
    iteration) when `root` is missing, not a folder or unreadable.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"not a folder: {root}")
    try:
        top = _sorted_entries(root)
        root_identity = _identity(root.stat())
    except OSError as exc:
        raise InputError(f"cannot read folder {root}: {exc.strerror or exc}") from exc
    report = report if report is not None else WalkReport()
    return _walk(top, {root_identity}, recursive=recursive, report=report)


def _walk(
    top: list[os.DirEntry[str]], seen_dirs: set[tuple[int, int]], *, recursive: bool, report: WalkReport
) -> Iterator[Path]:
    """Depth-first walk over pre-sorted listings; an explicit stack, so depth is unbounded."""
    stack: list[Iterator[os.DirEntry[str]]] = [iter(top)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        if _is_dir(entry):
            if recursive:
                listing = _enter_dir(entry, seen_dirs, report)
                if listing is not None:
                    stack.append(iter(listing))
        elif is_image_name(entry.name) and _is_file(entry):
            yield Path(entry.path)


def _enter_dir(
    entry: os.DirEntry[str], seen_dirs: set[tuple[int, int]], report: WalkReport
) -> list[os.DirEntry[str]] | None:
    """List a sub-folder unless the same real folder was already walked or it cannot be read.

    Identity is (device, inode) after following links: one cached stat per folder,
    where resolving the real path would cost a syscall per path component.
    """
    path = Path(entry.path)
    try:
        identity = _identity(entry.stat())
        listing = None if identity in seen_dirs else _sorted_entries(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        log.warning("skipping unreadable folder %s: %s", path, reason)
        report.unreadable_dirs.append((path, reason))
        return None
    if listing is None:
        log.debug("not descending into %s: that folder was already walked", path)
        report.repeated_dirs.append(path)
        return None
    seen_dirs.add(identity)
    return listing


def _identity(info: os.stat_result) -> tuple[int, int]:
    return (info.st_dev, info.st_ino)


def _sorted_entries(folder: Path) -> list[os.DirEntry[str]]:
    """Folder entries sorted by NFC name, then raw name: the same order for NFC and NFD disks."""
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda e: (unicodedata.normalize("NFC", e.name), e.name))


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    """Regular file or a link to one; dangling links, FIFOs and sockets are not."""
    try:
        return entry.is_file()
    except OSError:
        return False
