"""Perceptual hashes are computed once per content and survive re-encoding."""

from __future__ import annotations

import io
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image as PILImage
from sqlalchemy import Engine, select

from vicap_jobs.data.phash import HEX_DIGITS, hamming, index_key, perceptual_hash
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Image
from vicap_jobs.services.captioning import register_folder_images
from vicap_jobs.services.identity import fill_perceptual_hashes


def _photo(seed: int) -> PILImage.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    return PILImage.fromarray(small).resize((128, 128), PILImage.Resampling.BILINEAR)


def test_a_re_encoded_photo_keeps_its_hash_and_another_photo_does_not() -> None:
    """JPEG at quality 40 stays well within the 64-bit threshold (of 256); an unrelated photo is about half away."""
    photo = _photo(1)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=40)
    again = PILImage.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    assert len(perceptual_hash(photo)) == HEX_DIGITS == 64
    assert hamming(perceptual_hash(photo), perceptual_hash(again)) <= 40  # 32: this smooth photo's high bits wobble
    assert hamming(perceptual_hash(photo), perceptual_hash(_photo(2))) > 96


def test_the_index_key_is_the_low_frequency_corner_of_the_bit_matrix() -> None:
    """The 64-bit key holds the bits of the 8×8 lowest DCT frequencies of the 16×16 hash, row by row."""
    photo = _photo(5)
    matrix = np.asarray(imagehash.phash(photo.convert("L"), hash_size=16).hash, dtype=bool)
    corner = "".join("1" if bit else "0" for bit in matrix[:8, :8].ravel())
    assert index_key(perceptual_hash(photo)) == int(corner, 2)
    assert index_key("f" * 4 + "0" * 60) == 0xFF << 56  # row 0's first 8 bits are the key's top byte
    assert index_key("".join("ab00" if r < 8 else "ffff" for r in range(16))) == int("ab" * 8, 16)


def test_hashes_are_computed_once_per_content(sqlite_db: Engine, tmp_path: Path) -> None:
    """Two files with the same bytes are decoded once; an unreadable file keeps NULL."""
    first, copy, broken = tmp_path / "a.png", tmp_path / "copy.png", tmp_path / "broken.png"
    _photo(3).save(first)
    copy.write_bytes(first.read_bytes())
    broken.write_bytes(b"not a png")
    ids = register_folder_images(db=sqlite_db, paths=[first, copy, broken])
    assert fill_perceptual_hashes(db=sqlite_db, image_ids=ids) == 1
    with session_scope(sqlite_db) as session:
        hashes = dict(session.execute(select(Image.path, Image.phash).where(Image.id.in_(ids))).all())
    assert hashes[str(first)] == hashes[str(copy)] == perceptual_hash(_photo(3).convert("RGB"))
    assert hashes[str(broken)] is None
    assert fill_perceptual_hashes(db=sqlite_db, image_ids=ids) == 0  # nothing left that can be hashed


def test_a_large_photo_is_reduced_before_hashing_and_hashes_like_its_smaller_copy() -> None:
    """A 2048 px photo and its 512 px copy hash within 20 of 256 bits (the hash is about content, not pixels)."""
    large = _photo(4).resize((2048, 1536), PILImage.Resampling.BICUBIC)
    small = large.resize((512, 384), PILImage.Resampling.LANCZOS)
    assert hamming(perceptual_hash(large), perceptual_hash(small)) <= 20
