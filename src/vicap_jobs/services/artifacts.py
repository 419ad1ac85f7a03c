"""A model's files in object storage: published once by the host that wrote them, downloaded once per host.

Publishing (``VICAP_ARTIFACTS_URL`` set; without it nothing here runs and files stay where they were
written): every file of the model's ``artifact_dir`` (the checkpoint, its ONNX exports in ``onnx/``
and ``onnx/int8/``) is hashed and uploaded to ``<ARTIFACTS_URL>/<model name>/<version>/<path>``,
where the version is the first 16 hex digits of the SHA-256 of the sorted ``"<path> <sha256>"``
lines. ``MANIFEST.json`` (every file's sha256 and size, the model, its family, when) is uploaded
last, so a version without a manifest is a half-finished upload; only then does the ``models`` row
get ``artifacts_url`` and ``artifact_digests``. The publishing host also seeds its own cache, so it
never downloads what it just wrote.

Using (any host, any process): a model whose row has ``artifacts_url`` is read from the local
content-addressed cache ``VICAP_HOME/cache/artifacts/<version>/``. A cached copy is verified
against the row's digests before each load (the SQL store is the trust anchor, not the remote
manifest); a missing or failing copy is downloaded into a temporary folder beside it, every file
verified, and renamed into place in one step. One ``fcntl`` lock per version keeps concurrent
worker processes of one host from downloading twice or seeing half a folder. Each download is one
INFO log line and one JSON line in ``cache/artifacts/downloads.jsonl``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from vicap_jobs.data.images import sha256_file
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Model
from vicap_jobs.engines.onnx_format import EXPORT_FORMAT
from vicap_jobs.errors import ArtifactDigestError, NotFoundError
from vicap_jobs.models.manifest import ModelArtifacts, read_manifest
from vicap_jobs.settings import get_settings
from vicap_jobs.storage import objects
from vicap_jobs.storage.locations import join

if TYPE_CHECKING:
    from vicap_jobs.services.models import ModelRef

log = logging.getLogger(__name__)

#: The remote manifest of one published version, uploaded after every file it lists.
MANIFEST_NAME = "MANIFEST.json"
#: The cache's own log of completed downloads (one JSON object per line).
DOWNLOADS_FILE = "downloads.jsonl"
VERSION_DIGITS = 16


@dataclass(frozen=True)
class Download:
    """One completed download of a model version into this host's cache."""

    model: str
    version: str
    files: int
    bytes: int
    seconds: float
    at: str


# -- digests ---------------------------------------------------------------------------------------


def folder_files(folder: Path) -> list[str]:
    """Relative POSIX paths of every file under ``folder``, sorted; hidden names (``.x.part``) left out."""
    folder = Path(folder)
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append(relative.as_posix())
    return sorted(found)


def folder_digests(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {relative: sha256_file(Path(folder) / relative) for relative in folder_files(folder)}


def version_of(digests: Mapping[str, str]) -> str:
    """The version key of a set of files: 16 hex digits of the SHA-256 of the sorted ``"path sha256"`` lines."""
    lines = "".join(f"{path} {digests[path]}\n" for path in sorted(digests))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()[:VERSION_DIGITS]


# -- publishing ------------------------------------------------------------------------------------


def publish_artifacts(*, db: Engine, model_id: int) -> str | None:
    """Upload model ``model_id``'s files to ``VICAP_ARTIFACTS_URL`` and record where; returns the version's URL.

    None (and nothing done) when no artifacts URL is set. The checkpoint must read (its manifest)
    before anything is uploaded. Storage that stays down through the retries raises
    StorageUnavailable and leaves the row as it was: it never names a version whose manifest is missing.
    """
    root = get_settings().artifacts_url
    if root is None:
        return None
    with session_scope(db) as session:
        row = session.get(Model, model_id)
        if row is None:
            raise NotFoundError(f"no model with id {model_id}")
        name, family, folder = row.name, row.family, Path(row.artifact_dir)
        recorded_url, recorded_digests = row.artifacts_url, row.artifact_digests
    read_manifest(folder)  # a readable checkpoint, or a one-line error before any upload
    started = time.monotonic()
    digests = folder_digests(folder)
    version = version_of(digests)
    url = join(root, name, version)
    manifest_url = join(url, MANIFEST_NAME)
    if recorded_url == url and recorded_digests == digests and objects.exists(manifest_url):
        log.info("model %s version %s is already published at %s", name, version, url)
    else:
        for relative, digest in digests.items():
            _put(
                folder / relative,
                join(url, relative),
                same_at=_same_file(root, recorded_url, recorded_digests, relative, digest),
            )
        manifest = {
            "model": name,
            "family": family,
            "version": version,
            "files": {
                relative: {"sha256": digests[relative], "size": (folder / relative).stat().st_size}
                for relative in digests
            },
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        objects.write_bytes(manifest_url, json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8"))
        log.info(
            "published model %s version %s (%d files) to %s in %.1fs",
            name,
            version,
            len(digests),
            url,
            time.monotonic() - started,
        )
    _seed_cache(folder, digests)
    with session_scope(db) as session:
        row = session.get(Model, model_id)
        if row is None:
            raise NotFoundError(f"model {name!r} was deleted while it was being published")
        row.artifacts_url, row.artifact_digests = url, dict(digests)
    return url


def _same_file(root: str, url: str | None, digests: Mapping[str, str] | None, relative: str, digest: str) -> str | None:
    """The object of the previously published version (under the same ``root``) with the same bytes at ``relative``."""
    if url is None or not url.startswith(f"{root}/") or not digests or digests.get(relative) != digest:
        return None
    return join(url, relative)


def _put(source: Path, url: str, *, same_at: str | None) -> None:
    """Upload one file; copied within the store instead when the previous version has it unchanged (a re-export)."""
    if same_at is not None:
        try:
            objects.copy_object(same_at, url)
            return
        except objects.ObjectError:
            log.info("%s is gone; uploading %s instead", same_at, source.name)
    objects.upload_file(source, url)


def _seed_cache(folder: Path, digests: Mapping[str, str]) -> None:
    """Put the files just published into this host's cache (hard links where possible), so it never downloads them."""
    version = version_of(digests)
    root = cache_root()
    with _version_lock(root, version):
        target = root / version
        if target.is_dir() and _first_mismatch(target, digests) is None:
            return
        staging = _fresh_staging(root, version)
        for relative in digests:
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(folder / relative, destination)
            except OSError:
                shutil.copy2(folder / relative, destination)
        _move_into_place(staging, target)


# -- using -----------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``VICAP_HOME/cache/artifacts``: one folder per published version, its lock, and the downloads log."""
    root = get_settings().cache_dir / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root


def local_artifacts(model: ModelRef) -> ModelArtifacts:
    """Where this host reads model ``model``'s files: its own folders, or the verified cache of its published version.

    A published model's row paths are the writing host's: the checkpoint becomes the cache folder
    and the ONNX folder the same relative path inside it.
    """
    checkpoint = Path(model.artifact_dir)
    onnx = Path(model.onnx_path) if model.onnx_path else None
    if model.artifacts_url and model.artifact_digests:
        cached = fetch_artifacts(name=model.name, url=model.artifacts_url, digests=model.artifact_digests)
        if onnx is not None:
            onnx = cached / onnx.relative_to(checkpoint) if onnx.is_relative_to(checkpoint) else None
        checkpoint = cached
    return ModelArtifacts(checkpoint, exports={EXPORT_FORMAT: onnx} if onnx is not None else {})


def fetch_artifacts(*, name: str, url: str, digests: Mapping[str, str]) -> Path:
    """The verified local copy of the version at ``url`` (downloaded now unless cached and intact).

    Raises ArtifactDigestError (nothing kept) when a downloaded file is missing or does not match
    ``digests``; StorageUnavailable when the storage stays down through the retries.
    """
    version = version_of(digests)
    root = cache_root()
    target = root / version
    with _version_lock(root, version, shared=True):  # worker processes verify an intact copy side by side
        if target.is_dir() and _verified(name, version, target, digests):
            return target
    with _version_lock(root, version):  # one process downloads; the others wait, then find it intact
        if target.is_dir():
            if _verified(name, version, target, digests):
                return target
            shutil.rmtree(target)
        _download(name=name, url=url, digests=digests, root=root, version=version)
    return target


def _verified(name: str, version: str, folder: Path, digests: Mapping[str, str]) -> bool:
    """Whether every file of the cached ``folder`` matches ``digests`` (a warning says why not)."""
    started = time.monotonic()
    bad = _first_mismatch(folder, digests)
    if bad is None:
        log.debug("model %s version %s verified in cache in %.2fs", name, version, time.monotonic() - started)
        return True
    log.warning("cached copy of model %s version %s fails verification (%s); downloading it again", name, version, bad)
    return False


def _download(*, name: str, url: str, digests: Mapping[str, str], root: Path, version: str) -> None:
    """Download every file into a staging folder, verify each against ``digests``, rename it into place, log it."""
    started = time.monotonic()
    staging = _fresh_staging(root, version)
    total = 0
    try:
        for relative, expected in sorted(digests.items()):
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                objects.download_file(join(url, relative), destination)
            except objects.ObjectError as exc:
                raise ArtifactDigestError(
                    f"model {name!r}: {relative} cannot be downloaded from {url} ({exc}); expected sha256 {expected[:12]}…"
                ) from None
            actual = sha256_file(destination)
            if actual != expected:
                raise ArtifactDigestError(
                    f"model {name!r}: {relative} downloaded from {url} has sha256 {actual[:12]}…, the store recorded "
                    f"{expected[:12]}…; the download is discarded"
                )
            total += destination.stat().st_size
        _move_into_place(staging, root / version)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    record = Download(
        model=name,
        version=version,
        files=len(digests),
        bytes=total,
        seconds=round(time.monotonic() - started, 3),
        at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    log.info(
        "downloaded model %s version %s: %d files, %.1f MB in %.2fs (verified)",
        name,
        version,
        record.files,
        record.bytes / 1e6,
        record.seconds,
    )
    line = json.dumps(record.__dict__, ensure_ascii=False) + "\n"
    with (root / DOWNLOADS_FILE).open("a", encoding="utf-8") as log_file:
        log_file.write(line)


def read_downloads(root: Path | None = None) -> list[Download]:
    """Every download logged in this host's cache (``downloads.jsonl``), oldest first."""
    path = (root or cache_root()) / DOWNLOADS_FILE
    if not path.is_file():
        return []
    return [Download(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _first_mismatch(folder: Path, digests: Mapping[str, str]) -> str | None:
    """A description of the first file of ``folder`` missing or not matching ``digests``; None when all match."""
    for relative, expected in sorted(digests.items()):
        path = folder / relative
        if not path.is_file():
            return f"{relative} is missing"
        actual = sha256_file(path)
        if actual != expected:
            return f"{relative} has sha256 {actual[:12]}…, expected {expected[:12]}…"
    return None


@contextlib.contextmanager
def _version_lock(root: Path, version: str, *, shared: bool = False) -> Iterator[None]:
    """A lock on ``<version>.lock`` between the processes of this host (released if one dies): exclusive to
    change the version's folder, shared to read it."""
    with (root / f"{version}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fresh_staging(root: Path, version: str) -> Path:
    """An empty staging folder ``.<version>.<pid>.part`` (a dead process's leftovers of this version removed)."""
    for leftover in root.glob(f".{version}.*.part"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = root / f".{version}.{os.getpid()}.part"
    staging.mkdir()
    return staging


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the complete staging folder to ``target`` in one step (readers see all of it or nothing)."""
    if target.exists():
        shutil.rmtree(target)
    os.rename(staging, target)
