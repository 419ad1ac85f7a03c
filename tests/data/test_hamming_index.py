"""The multi-index Hamming search returns exactly the pairs a plain double loop finds, for every plan."""

from __future__ import annotations

import random

import numpy as np
import pytest

from vicap_jobs.data import hamming_index
from vicap_jobs.data.hamming_index import (
    Fine,
    as_hashes,
    as_words,
    brute_force_pair_indices,
    choose_blocks,
    near_pair_indices,
    near_pairs,
    popcount,
)


def _planted(n_left: int, n_right: int, threshold: int, seed: int) -> tuple[list[int], list[int]]:
    """Random 64-bit hashes; a third of the right ones are left ones with 0..threshold + 2 bits flipped."""
    rng = random.Random(seed)
    left = [rng.getrandbits(64) for _ in range(n_left)]
    right = [rng.getrandbits(64) for _ in range(n_right)]
    for j in range(0, n_right, 3):
        value = rng.choice(left)
        for bit in rng.sample(range(64), rng.randint(0, threshold + 2)):
            value ^= 1 << bit
        right[j] = value
    return left, right


def _reference(left: list[int], right: list[int] | None, threshold: int) -> list[tuple[int, int, int]]:
    """The definition, as a double loop over Python ints."""
    other = left if right is None else right
    return [
        (i, j, (a ^ b).bit_count())
        for i, a in enumerate(left)
        for j, b in enumerate(other)
        if (right is not None or i < j) and (a ^ b).bit_count() <= threshold
    ]


def _as_triples(found: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[tuple[int, int, int]]:
    return list(zip(*(a.tolist() for a in found), strict=True))


PLANS = [(t, b) for t in (0, 3, 8, 12) for b in (None, 0, 2, 4, 9) if not b or t // b <= 3]


@pytest.mark.parametrize(("threshold", "blocks"), PLANS)
def test_every_plan_finds_exactly_the_pairs_within_the_threshold(threshold: int, blocks: int | None) -> None:
    """Automatic, all-pairs, wide (binary-search) and narrow (table) blocks all equal the double loop."""
    left, right = _planted(300, 240, threshold, seed=threshold)
    want = _reference(left, right, threshold)
    assert any(d == threshold for *_, d in want) or threshold == 0  # the boundary itself is exercised
    found = near_pair_indices(as_hashes(left), as_hashes(right), threshold, blocks=blocks)
    assert _as_triples(found) == want


@pytest.mark.parametrize(("threshold", "blocks"), [(8, 3), (8, 4), (8, 5), (8, 9), (10, 4), (5, 2), (3, 6)])
def test_a_pair_that_only_one_block_can_find_is_found(threshold: int, blocks: int) -> None:
    """Pigeonhole at its edge: every block one flip past its radius but one, which sits exactly at it.

    Each such pair is at distance ``threshold`` (the radii add up to threshold + 1 - blocks), so
    any block searched too narrowly, or any radius too small, loses it.
    """
    plan = hamming_index._plan(blocks, threshold, 1, 1)
    assert sum(r + 1 for r in plan.radii if r >= 0) == threshold + 1
    rng = random.Random(threshold * 100 + blocks)
    left, right = [], []
    for weak in (b for b, r in enumerate(plan.radii) if r >= 0):
        for _ in range(5):
            base, value, start = rng.getrandbits(64), 0, 0
            for b, (width, radius) in enumerate(zip(plan.widths, plan.radii, strict=True)):
                flips = max(radius, 0) if b == weak else radius + 1
                for bit in rng.sample(range(width), flips):
                    value |= 1 << (63 - start - bit)
                start += width
            left.append(base)
            right.append(base ^ value)
    found = near_pair_indices(as_hashes(left), as_hashes(right), threshold, blocks=blocks)
    assert {(i, j) for i, j, _ in _as_triples(found)} >= {(k, k) for k in range(len(left))}
    assert set(found[2][found[0] == found[1]].tolist()) == {threshold}


@pytest.mark.parametrize("threshold", [0, 5, 8])
def test_within_one_set_each_pair_once_and_never_an_element_with_itself(threshold: int) -> None:
    """right=None: i < j only, duplicates of a hash pair with each other, not with themselves."""
    left, right = _planted(150, 150, threshold, seed=7)
    values = left + right + left[:5]  # five exact copies
    want = _reference(values, None, threshold)
    for blocks in (None, 0, 3, threshold + 1):
        assert _as_triples(near_pair_indices(as_hashes(values), None, threshold, blocks=blocks)) == want
    assert all(i < j for i, j, _ in want) and len(want) >= 5


def test_many_equal_hashes_expand_in_bounded_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket larger than the candidate and key chunks still yields every pair once."""
    monkeypatch.setattr(hamming_index, "CANDIDATE_CHUNK", 64)
    monkeypatch.setattr(hamming_index, "KEY_CHUNK", 32)
    same = [0x0123456789ABCDEF] * 40 + [0x0123456789ABCDEE] * 3 + [0xFEDCBA9876543210] * 2
    found = _as_triples(near_pair_indices(as_hashes(same), None, 2, blocks=3))
    assert found == _reference(same, None, 2)
    assert len(found) == 43 * 42 // 2 + 1  # every pair of the 43 close copies, and the two far ones with each other
    across = _as_triples(near_pair_indices(as_hashes(same[:30]), as_hashes(same), 1, blocks=2))
    assert across == _reference(same[:30], same, 1)


def test_near_pairs_maps_positions_to_ids_and_reads_hex() -> None:
    """Ids (any hashable) come back with the distance; hex strings are the stored phash form."""
    left = [("train/a.jpg", "ffffffff00000000"), ("train/b.jpg", 0x0F0F0F0F0F0F0F0F)]
    right = [(7, "fffffffe00000000"), (8, "0000000000000000"), (9, "0f0f0f0f0f0f0f0f")]
    assert near_pairs(left, right, 4) == [("train/a.jpg", 7, 1), ("train/b.jpg", 9, 0)]
    assert near_pairs(left + [("copy", "ffffffff00000001")], None, 1) == [("train/a.jpg", "copy", 1)]
    assert near_pairs([], right, 4) == [] and near_pairs(left, [], 4) == []


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        near_pair_indices(as_hashes([1]), None, 64)
    with pytest.raises(ValueError, match="64 bits"):
        as_hashes([1 << 64])
    with pytest.raises(ValueError, match="blocks"):
        near_pair_indices(as_hashes([1, 2]), None, 3, blocks=65)


def test_the_cost_model_scans_small_sets_and_indexes_large_ones() -> None:
    """Tiny inputs go to the all-pairs scan; 50k × 50k at 8 bits splits into wide blocks with a small radius."""
    assert choose_blocks(10, 10, 8).blocks == 0
    plan = choose_blocks(50_000, 50_000, 8)
    assert 3 <= plan.blocks <= 6 and max(plan.radii) >= 1 and sum(plan.widths) == 64
    assert plan.cost < 0.1 * hamming_index.BRUTE_PAIR_COST * 50_000 * 50_000
    assert choose_blocks(2_000, 2_000, 40).blocks == 0  # no split helps at such a threshold


def test_popcount_without_numpy_bitwise_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The byte-table fallback (numpy < 2) counts the same bits."""
    values = as_hashes([0, 1, (1 << 64) - 1, 0x8000000000000001, 0x0123456789ABCDEF])
    want = [0, 1, 64, 2, 32]
    assert popcount(values).tolist() == want
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert popcount(values).tolist() == want
    assert popcount(values.reshape(5, 1)).ravel().tolist() == want


def test_index_and_scan_agree_on_a_larger_random_set() -> None:
    """4k × 4k uniform hashes with planted pairs: the chosen index plan equals the numpy scan."""
    left, right = _planted(4000, 4000, 8, seed=3)
    a, b = as_hashes(left), as_hashes(right)
    assert choose_blocks(4000, 4000, 8).blocks > 0
    found = near_pair_indices(a, b, 8)
    scan = brute_force_pair_indices(a, b, 8)
    assert all(np.array_equal(x, y) for x, y in zip(found, scan, strict=True)) and len(found[0]) > 1000


def _wide(keys: list[int], rng: random.Random) -> list[int]:
    """192 more random bits after each 64-bit key: 256-bit hashes whose top word is the key."""
    return [(key << 192) | rng.getrandbits(192) for key in keys]


def _fine_reference(
    keys_left: list[int], keys_right: list[int] | None, wide_left: list[int], wide_right: list[int] | None,
    threshold: int, fine_threshold: int,
) -> list[tuple[int, int, int]]:  # fmt: skip
    """The two-stage definition as a double loop: keys within ``threshold`` and wide hashes within ``fine_threshold``."""
    other_wide = wide_left if wide_right is None else wide_right
    return [
        (i, j, (wide_left[i] ^ other_wide[j]).bit_count())
        for i, j, _ in _reference(keys_left, keys_right, threshold)
        if (wide_left[i] ^ other_wide[j]).bit_count() <= fine_threshold
    ]


@pytest.mark.parametrize("blocks", [None, 0, 2, 4])
def test_a_fine_hash_verifies_every_key_pair_in_every_plan(blocks: int | None) -> None:
    """Key pairs whose 256-bit hashes differ in more than the fine threshold are dropped; distances are the wide ones."""
    rng = random.Random(7)
    keys_left, keys_right = _planted(300, 240, 6, seed=11)
    wide_left, wide_right = _wide(keys_left, rng), _wide(keys_right, rng)
    coarse = _reference(keys_left, keys_right, 6)
    for i, j, _ in coarse[::2]:  # half the key pairs get wide hashes close to their partner's
        wide_right[j] = wide_left[i] ^ (1 << rng.randrange(192))
    fine_threshold = 40  # the random 192-bit tails of the other half differ in ~96 bits
    fine = Fine(
        as_words([f"{w:064x}" for w in wide_left], 256),
        as_words([f"{w:064x}" for w in wide_right], 256),
        fine_threshold,
    )
    found = _as_triples(near_pair_indices(as_hashes(keys_left), as_hashes(keys_right), 6, blocks=blocks, fine=fine))
    want = _fine_reference(keys_left, keys_right, wide_left, wide_right, 6, fine_threshold)
    assert found == want and 0 < len(want) < len(coarse)
    within = Fine(fine.left, None, fine_threshold)
    found_within = _as_triples(near_pair_indices(as_hashes(keys_left), None, 6, blocks=blocks, fine=within))
    assert found_within == _fine_reference(keys_left, None, wide_left, None, 6, fine_threshold)


def test_as_words_reads_wide_hex_hashes_and_refuses_other_widths() -> None:
    """A 256-bit hex hash becomes four 64-bit words, most significant first; a fine search must match the sides."""
    value = "0123456789abcdef" + "ffffffffffffffff" + "0000000000000001" + "8000000000000000"
    words = as_words([value], 256)
    assert words.shape == (1, 4) and [f"{w:016x}" for w in words[0].tolist()] == [
        value[k : k + 16] for k in (0, 16, 32, 48)
    ]
    assert popcount(words).sum() == (int(value, 16)).bit_count()
    with pytest.raises(ValueError, match="64 hex digits"):
        as_words(["0123456789abcdef"], 256)
    with pytest.raises(ValueError, match="multiple of 64"):
        as_words([], 100)
    with pytest.raises(ValueError, match="fine.right"):
        near_pair_indices(as_hashes([1, 2]), None, 3, fine=Fine(words, words, 10))
    with pytest.raises(ValueError, match="one row per hash"):
        near_pair_indices(as_hashes([1, 2]), as_hashes([3]), 3, fine=Fine(words, words, 10))
