"""Perceptual hashes: the identity of a photo that survives re-encoding, resizing, small crops and brightness.

``imagehash.phash(hash_size=16)``: the image reduced to 64×64 grey, its 2-D DCT, and one bit per
coefficient of the 16×16 lowest frequencies (above their median or not), 256 bits written as 64
hex digits (row by row, the form ``images.phash`` stores). Two photos are near duplicates when
their hashes differ in few bits (:func:`hamming`). The 64-bit *index key* (:func:`index_key`) is
the 8×8 lowest-frequency corner of that bit matrix: ``services/overlap.py`` finds candidate pairs
with it through the multi-index (``data/hamming_index.py``, 64-bit words) and keeps those whose
full 256-bit hashes are close.

Why one 256-bit column and a derived key, not a second column beside the 64-bit hash
(``bench/overlap.py``, 10 × (40 drawn scenes × 4 variants + 40 distinct), 2026-11-30): the key
finds as many true pairs as the separate 64-bit ``imagehash.phash`` did at each threshold (at 12
bits 0.996 / 0.989 of them against 0.996 / 0.993; distinct = same sport / same attributes) and
as few false ones (its bits are as balanced: 32.7 set on average, each set in 34–66 % of photos
except the always-set DC bit, as in phash8), and the two-stage results with either key are within
0.003 of each other. So the second hash would cost a column and a second DCT and give nothing; with
one column every writer (and the caption-reuse upsert that clears a changed file's hash) keeps
one value per content, and the hash is computed once, one DCT.

The 64-bit hash (32×32 grey, 8×8 DCT corner) put different scenes of the same layout within 8
bits (a tennis player on a red court and another on a blue one); the 256-bit hash sees 4× finer
frequencies: at 64 bits recall 0.980 with precision 0.999 / 0.989 per group, 0.95 pooled, against
phash8's 0.966 / 0.985 and 0.81–0.88 pooled at 8 bits.

A photo whose shorter side is at least twice ``CANONICAL_SIDE`` is first box-reduced by an integer
factor (``Image.reduce``, cheap) to a shorter side of ``CANONICAL_SIDE``..2×: phash then resizes it to
64×64 anyway, and the workers hash every new photo they caption. Measured on a 2-core Xeon
(2026-11-30, five drawn photos per size): 1280×960 6.5 → 2.3 ms, 4000×3000 66 → 9.5 ms, 640×480
and smaller unchanged (1.8 ms; the 64-bit hash cost the same); the 256-bit hashes differ from the
unreduced ones by 0–4 bits (of a 64-bit threshold). Every writer of ``images.phash`` goes through
this function, so the definition is one.
"""

from __future__ import annotations

import imagehash
from PIL import Image

HASH_SIZE = 16
HASH_BITS = HASH_SIZE * HASH_SIZE  # 256
HEX_DIGITS = HASH_BITS // 4  # 64, the width of images.phash
KEY_SIZE = 8
KEY_BITS = KEY_SIZE * KEY_SIZE  # 64: one word of the multi-index
CANONICAL_SIDE = 256

_ROW_DIGITS = HASH_SIZE // 4  # hex digits per row of the bit matrix
_KEY_ROW_DIGITS = KEY_SIZE // 4


def perceptual_hash(image: Image.Image) -> str:
    """The 256-bit perceptual hash of a decoded image, as 64 lower-case hex digits."""
    factor = min(image.size) // CANONICAL_SIDE
    if factor >= 2:
        image = image.reduce(factor)
    return str(imagehash.phash(image.convert("L"), hash_size=HASH_SIZE))


def index_key(value: str) -> int:
    """The 64-bit index key of a hash: the bits of its 8×8 lowest frequencies, row by row."""
    if len(value) != HEX_DIGITS:
        raise ValueError(f"a perceptual hash has {HEX_DIGITS} hex digits, got {len(value)}: {value!r}")
    rows = (value[r * _ROW_DIGITS : r * _ROW_DIGITS + _KEY_ROW_DIGITS] for r in range(KEY_SIZE))
    return int("".join(rows), 16)


def hamming(first: str, second: str) -> int:
    """How many bits two hashes (hex digits, e.g. two 256-bit ``images.phash`` values) differ in."""
    return (int(first, 16) ^ int(second, 16)).bit_count()
