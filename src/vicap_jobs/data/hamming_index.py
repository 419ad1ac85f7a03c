"""Near-duplicate pairs among 64-bit hashes without comparing every pair: multi-index hashing.

The 64 bits are cut into ``m`` blocks, block ``b`` searched within a radius ``r_b`` such that
``sum(r_b + 1) = T + 1``. By pigeonhole, two hashes within Hamming distance ``T`` differ in at most
``r_b`` bits of at least one block ``b`` (if every block differed in ``r_b + 1`` or more, the total
would exceed ``T``). With ``T = m·q + a`` the first ``a + 1`` blocks get radius ``q`` and the others
``q - 1`` (the refinement of Norouzi et al.'s multi-index hashing; ``T // m`` everywhere would do
needless work). For each block the right-hand hashes are sorted by that block's value, and every
left-hand hash looks up the block values within the block's radius of its own (all flips of up
to ``r_b`` bits: the probes) — a table of bucket offsets when the block is narrow enough, a binary
search otherwise. Each candidate found is verified with a popcount of the full XOR, and a pair
found through several blocks is kept once.

``m = T + 1`` (radius 0, exact block matches) is the textbook case, but with 64 bits and a
threshold near 10 its blocks are 5–6 bits wide, so each bucket holds ~1/64 of the set and the
candidates stay quadratic. Wider blocks with a small radius (4 blocks of 16 bits, radii 2/2/2/1,
for ``T = 10``) keep buckets nearly empty at a few hundred probes per hash; :func:`choose_blocks`
picks ``m`` from a cost model of probes plus expected candidates (hashes uniform), and falls
back to the chunked all-pairs scan (:func:`brute_force_pair_indices`) when that is cheaper (tiny
sets, or a threshold so large that no split helps). For one fixed split the expected candidates
still grow with the product of the two sizes (divided by ``2**width``); choosing fewer, wider
blocks as the sets grow keeps the whole search near ``n**(1 + H(T/64))`` (Norouzi et al.; H the
binary entropy: ``n**1.54`` at T = 8). ``bench/overlap.py`` measures it: at 8 bits 0.46 s for
50k × 50k hashes against ~17 s for the all-pairs scan, time growing as ``n**1.77`` from 12.5k to
100k a side (the scan: ``n**2.03``); at 12 bits, the service's candidate threshold, with every
candidate verified on 256 bits (:class:`Fine`), 3.2 s against ~21 s, ``n**1.72`` (2026-11-30,
a busier box).

Two-stage search (:class:`Fine`): each element may carry a second, wider hash (several 64-bit
words, e.g. the 256-bit ``images.phash`` whose 8×8 corner is the 64-bit key searched here). Every
pair found within ``threshold`` on the keys is then kept only when the wide hashes differ in at
most ``Fine.threshold`` bits, inside the same chunks, and the distance returned is the wide one.

Everything is numpy, in chunks that bound memory (a few million candidates at a time).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

HASH_BITS = 64
MAX_THRESHOLD = HASH_BITS - 1
#: Keys (hash × probe) looked up at once, and candidates verified at once: bounds memory to ~100 MB.
KEY_CHUNK = 1 << 21
CANDIDATE_CHUNK = 1 << 22
#: Blocks up to this width use a table of bucket offsets (2**width + 1 int64); wider ones a binary search.
TABLE_BITS = 22
#: Relative costs of the cost model, measured (bench/overlap.py, one core): a probe (a table lookup and
#: the bookkeeping of its run) and a candidate (gathers, an XOR, a popcount) each take 25–35 ns; one
#: comparison of the all-pairs scan ~6 ns, since it is one vectorised pass with no gathers.
PROBE_COST = 1.0
CANDIDATE_COST = 1.0
BRUTE_PAIR_COST = 0.2

K = TypeVar("K", bound=Hashable)
Hashes = NDArray[np.uint64]
Words = NDArray[np.uint64]  # (n, words): one wide hash per row
Pairs = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]


@dataclass(frozen=True)
class Fine:
    """Wide hashes (one row of 64-bit words per element) that verify every key pair: kept when within ``threshold``.

    ``right`` None: the search is within ``left``.
    """

    left: Words
    right: Words | None
    threshold: int

    def distances(self, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> NDArray[np.int64]:
        """Hamming distances of the wide hashes of the pairs (rows[k], cols[k])."""
        other = self.left if self.right is None else self.right
        return popcount(self.left[rows] ^ other[cols]).sum(axis=1) if len(rows) else np.zeros(0, np.int64)

    def keep(self, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> Pairs:
        """The pairs whose wide hashes are within the threshold, with those distances."""
        dist = self.distances(rows, cols)
        kept = dist <= self.threshold
        return rows[kept], cols[kept], dist[kept]


@dataclass(frozen=True)
class Plan:
    """How a search runs: ``blocks`` = 0 means the all-pairs scan; else the width and search radius of each block."""

    blocks: int
    widths: tuple[int, ...]
    radii: tuple[int, ...]
    cost: float


def as_hashes(values: Sequence[int | str]) -> Hashes:
    """64-bit hashes as a uint64 array; strings are read as hexadecimal (``images.phash``'s 16 digits)."""
    numbers = [int(v, 16) if isinstance(v, str) else int(v) for v in values]
    for number in numbers:
        if not 0 <= number < 1 << HASH_BITS:
            raise ValueError(f"hash {number:#x} does not fit in {HASH_BITS} bits")
    return np.array(numbers, dtype=np.uint64)


def as_words(values: Sequence[str], bits: int) -> Words:
    """Hex hashes of ``bits`` bits (a multiple of 64) as an (n, bits / 64) uint64 array, most significant word first."""
    if bits % HASH_BITS:
        raise ValueError(f"bits must be a multiple of {HASH_BITS}, got {bits}")
    digits = bits // 4
    for value in values:
        if len(value) != digits:
            raise ValueError(f"a {bits}-bit hash has {digits} hex digits, got {len(value)}: {value!r}")
    raw = bytes.fromhex("".join(values))
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(values), bits // HASH_BITS)


def popcount(values: NDArray[np.uint64]) -> NDArray[np.int64]:
    """Set bits per element of a uint64 array."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values).astype(np.int64)
    as_bytes = np.ascontiguousarray(values).view(np.uint8).reshape(*values.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.int64)


_BYTE_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)


def near_pairs(
    left: Sequence[tuple[K, int | str]], right: Sequence[tuple[K, int | str]] | None, threshold: int
) -> list[tuple[K, K, int]]:
    """(left id, right id, distance) for every pair of hashes within ``threshold`` bits, sorted.

    ``right`` None: pairs within ``left`` itself, each once (the first element's position comes
    first) and never an element with itself.
    """
    left_ids = [key for key, _ in left]
    left_hashes = as_hashes([value for _, value in left])
    if right is None:
        rows, cols, dist = near_pair_indices(left_hashes, None, threshold)
        right_ids = left_ids
    else:
        right_ids = [key for key, _ in right]
        rows, cols, dist = near_pair_indices(left_hashes, as_hashes([value for _, value in right]), threshold)
    return [(left_ids[i], right_ids[j], d) for i, j, d in zip(rows.tolist(), cols.tolist(), dist.tolist(), strict=True)]


def near_pair_indices(
    left: Hashes, right: Hashes | None, threshold: int, *, blocks: int | None = None, fine: Fine | None = None
) -> Pairs:
    """Positions (i in left, j in right) and distances of all pairs within ``threshold``, sorted by (i, j).

    ``right`` None: pairs within ``left`` with i < j. ``blocks`` forces the number of blocks
    (0 = the all-pairs scan); by default :func:`choose_blocks` picks it. ``fine``: keep only the
    pairs whose wide hashes are also within ``fine.threshold``, and return those distances.
    """
    _check_threshold(threshold)
    _check_fine(fine, left, right)
    within = right is None
    other = left if right is None else right
    if len(left) == 0 or len(other) == 0:
        return _empty()
    plan = choose_blocks(len(left), len(other), threshold) if blocks is None else _plan(blocks, threshold, 1, 1)
    if plan.blocks == 0:
        return brute_force_pair_indices(left, right, threshold, fine=fine)
    found: list[Pairs] = []
    shift = HASH_BITS
    for width, radius in zip(plan.widths, plan.radii, strict=True):
        shift -= width
        if radius < 0:
            continue
        found.append(_search_block(left, other, threshold, shift, width, radius, within, fine))
    return _unique(found)


def brute_force_pair_indices(left: Hashes, right: Hashes | None, threshold: int, *, fine: Fine | None = None) -> Pairs:
    """The all-pairs scan (vectorised a chunk of left rows at a time): the baseline and the small-set path."""
    _check_threshold(threshold)
    _check_fine(fine, left, right)
    within = right is None
    other = left if right is None else right
    if len(left) == 0 or len(other) == 0:
        return _empty()
    rows_per_chunk = max(1, CANDIDATE_CHUNK // len(other))
    found: list[Pairs] = []
    for start in range(0, len(left), rows_per_chunk):
        block = left[start : start + rows_per_chunk]
        dist = popcount(block[:, None] ^ other[None, :])  # (rows, n_right)
        hit = dist <= threshold
        if within:
            hit &= np.arange(start, start + len(block))[:, None] < np.arange(len(other))[None, :]
        rows, cols = np.nonzero(hit)
        pairs = (rows.astype(np.int64) + start, cols.astype(np.int64), dist[rows, cols])
        found.append(pairs if fine is None else fine.keep(pairs[0], pairs[1]))
    return _concat(found)


def choose_blocks(n_left: int, n_right: int, threshold: int) -> Plan:
    """The cheapest plan under the cost model: every block count from 1 to threshold + 1, or the all-pairs scan."""
    _check_threshold(threshold)
    best = _plan(0, threshold, n_left, n_right)
    for blocks in range(1, min(threshold + 1, HASH_BITS) + 1):
        plan = _plan(blocks, threshold, n_left, n_right)
        if plan.cost < best.cost:
            best = plan
    return best


def _plan(blocks: int, threshold: int, n_left: int, n_right: int) -> Plan:
    if blocks == 0:
        return Plan(0, (), (), BRUTE_PAIR_COST * n_left * n_right)
    if not 1 <= blocks <= HASH_BITS:
        raise ValueError(f"blocks must be 0 (all pairs) or 1..{HASH_BITS}, got {blocks}")
    base, extra = divmod(HASH_BITS, blocks)
    widths = tuple(base + 1 if b < extra else base for b in range(blocks))
    quotient, remainder = divmod(threshold, blocks)
    radii = tuple(quotient if b <= remainder else quotient - 1 for b in range(blocks))  # sum(r + 1) = threshold + 1
    cost = 0.0
    for width, radius in zip(widths, radii, strict=True):
        if radius < 0:
            continue  # blocks > threshold + 1: the first threshold + 1 blocks suffice
        probes = sum(math.comb(width, k) for k in range(min(radius, width) + 1))
        candidates = n_left * probes * n_right / 2.0**width
        cost += PROBE_COST * n_left * probes + CANDIDATE_COST * candidates
    return Plan(blocks, widths, radii, cost)


def _probe_masks(width: int, radius: int) -> NDArray[np.uint64]:
    """Every ``width``-bit value with at most ``radius`` bits set (the flips to look up)."""
    masks = [
        sum(1 << bit for bit in bits)
        for k in range(min(radius, width) + 1)
        for bits in itertools.combinations(range(width), k)
    ]
    return np.array(masks, dtype=np.uint64)


def _search_block(
    left: Hashes, right: Hashes, threshold: int, shift: int, width: int, radius: int, within: bool, fine: Fine | None
) -> Pairs:
    """Pairs within ``threshold`` whose values in the block at ``shift`` (``width`` bits) are within ``radius``."""
    block_mask = np.uint64((1 << width) - 1)
    right_values = (right >> np.uint64(shift)) & block_mask
    order = np.argsort(right_values, kind="stable")
    sorted_values = right_values[order]
    table = (
        np.searchsorted(sorted_values, np.arange((1 << width) + 1, dtype=np.uint64)) if width <= TABLE_BITS else None
    )
    masks = _probe_masks(width, radius)
    left_values = (left >> np.uint64(shift)) & block_mask
    rows_per_chunk = max(1, KEY_CHUNK // len(masks))
    found: list[Pairs] = []
    for start in range(0, len(left), rows_per_chunk):
        keys = (left_values[start : start + rows_per_chunk, None] ^ masks[None, :]).ravel()  # (rows * probes,)
        if table is not None:
            index = keys.astype(np.int64)
            lo, hi = table[index], table[index + 1]
        else:
            lo = np.searchsorted(sorted_values, keys, side="left")
            hi = np.searchsorted(sorted_values, keys, side="right")
        counts = hi - lo
        occupied = np.nonzero(counts)[0]
        if len(occupied) == 0:
            continue
        key_rows = occupied // len(masks) + start
        found.extend(_verify(left, right, order, key_rows, lo[occupied], counts[occupied], threshold, within, fine))
    return _concat(found)


def _verify(
    left: Hashes,
    right: Hashes,
    order: NDArray[np.int64],
    key_rows: NDArray[np.int64],
    lo: NDArray[np.int64],
    counts: NDArray[np.int64],
    threshold: int,
    within: bool,
    fine: Fine | None,
) -> list[Pairs]:
    """Expand runs of sorted right positions into candidate pairs and keep those within the threshold.

    Runs are expanded a slice at a time so that at most ~CANDIDATE_CHUNK candidates exist at once.
    """
    ends = np.cumsum(counts)
    found: list[Pairs] = []
    first = 0
    while first < len(counts):
        done_before = int(ends[first - 1]) if first else 0
        last = max(first + 1, int(np.searchsorted(ends, done_before + CANDIDATE_CHUNK, side="right")))
        part = slice(first, last)
        run_counts = counts[part]
        total = int(run_counts.sum())
        run_starts = np.repeat(ends[part] - run_counts - done_before, run_counts)
        positions = np.repeat(lo[part], run_counts) + (np.arange(total) - run_starts)
        rows = np.repeat(key_rows[part], run_counts)
        cols = order[positions]
        dist = popcount(left[rows] ^ right[cols])
        keep = dist <= threshold
        if within:
            keep &= rows < cols
        pairs = (rows[keep], cols[keep].astype(np.int64), dist[keep])
        found.append(pairs if fine is None else fine.keep(pairs[0], pairs[1]))
        first = last
    return found


def _unique(found: list[Pairs]) -> Pairs:
    """Pairs found through several blocks kept once, sorted by (i, j)."""
    rows, cols, dist = _concat(found)
    if len(rows) == 0:
        return rows, cols, dist
    n_cols = int(cols.max()) + 1
    _, first = np.unique(rows * n_cols + cols, return_index=True)  # sorted by (row, col)
    return rows[first], cols[first], dist[first]


def _concat(found: list[Pairs]) -> Pairs:
    if not found:
        return _empty()
    return (
        np.concatenate([f[0] for f in found]).astype(np.int64),
        np.concatenate([f[1] for f in found]).astype(np.int64),
        np.concatenate([f[2] for f in found]).astype(np.int64),
    )


def _empty() -> Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)


def _check_fine(fine: Fine | None, left: Hashes, right: Hashes | None) -> None:
    if fine is None:
        return
    if (fine.right is None) != (right is None):
        raise ValueError("fine.right must be None exactly when right is None (a search within left)")
    if len(fine.left) != len(left) or (right is not None and fine.right is not None and len(fine.right) != len(right)):
        raise ValueError("fine hashes must have one row per hash searched")
    if fine.threshold < 0:
        raise ValueError(f"fine threshold must be 0 or more, got {fine.threshold}")


def _check_threshold(threshold: int) -> None:
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise ValueError(f"threshold must be between 0 and {MAX_THRESHOLD} bits, got {threshold}")
