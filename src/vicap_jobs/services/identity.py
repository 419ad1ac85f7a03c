"""One identity per image: perceptual hashes computed once per content and stored on the image rows.

A hash is computed once per sha256: rows whose content already has a hash (another data set's
copy of the photo, an earlier caption folder) get that hash without decoding anything. Files
that cannot be decoded keep NULL. Caption workers hash the photos they decode anyway
(``pipeline/runner.py``), by the same rule and through the same writer functions
(``jobs/writer.py``: :func:`known_phashes`, :func:`write_phashes`), so this is for images no
caption job has read: a freshly imported data set, before ``dataset overlap``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from sqlalchemy import Engine, select

from vicap_jobs.data.images import load_rgb
from vicap_jobs.data.phash import perceptual_hash
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Image
from vicap_jobs.errors import VicapError
from vicap_jobs.jobs.writer import known_phashes, write_phashes

PAGE = 1000


def fill_perceptual_hashes(*, db: Engine, image_ids: Iterable[int]) -> int:
    """Give every listed image without a perceptual hash its hash; returns how many files were hashed by decoding them."""
    ids = list(dict.fromkeys(image_ids))
    decoded = 0
    for start in range(0, len(ids), PAGE):
        page = ids[start : start + PAGE]
        with session_scope(db) as session:
            rows = session.execute(
                select(Image.id, Image.path, Image.sha256).where(Image.id.in_(page), Image.phash.is_(None))
            ).all()
            known = known_phashes(session=session, digests=[sha for _, _, sha in rows if sha])
        hashes: dict[int, str] = {}
        for image_id, path, sha in rows:
            if sha and sha in known:
                hashes[image_id] = known[sha]
                continue
            value = _hash_file(path)
            if value is None:
                continue
            decoded += 1
            hashes[image_id] = value
            if sha:
                known[sha] = value
        with session_scope(db) as session:
            write_phashes(session=session, hashes=hashes)
    return decoded


def _hash_file(path: str) -> str | None:
    """The perceptual hash of a local file or object, or None when it cannot be decoded (or storage is down)."""
    with contextlib.suppress(VicapError, OSError):
        return perceptual_hash(load_rgb(path))
    return None
