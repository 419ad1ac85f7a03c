"""Perceptual hashes: the identity of a photo that survives re-encoding, resizing, small crops and brightness.

``imagehash.phash`` (DCT of a 32×32 grey image, 64 bits) written as 16 hex digits, the form
``images.phash`` stores. Two photos are near duplicates when their hashes differ in few bits
(:func:`hamming`); ``services/overlap.py`` finds such pairs without comparing all of them.
"""

from __future__ import annotations

import imagehash
from PIL import Image

HASH_BITS = 64


def perceptual_hash(image: Image.Image) -> str:
    """The 64-bit perceptual hash of a decoded image, as 16 lower-case hex digits."""
    return str(imagehash.phash(image, hash_size=8))


def hamming(first: str, second: str) -> int:
    """How many of the 64 bits two hashes (16 hex digits each) differ in."""
    return (int(first, 16) ^ int(second, 16)).bit_count()
