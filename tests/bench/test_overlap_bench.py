"""``bench/overlap.py`` in miniature: the generated set, the sweep's arithmetic, planted pairs, a tiny full run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from vicap_jobs.data.hamming_index import brute_force_pair_indices
from vicap_jobs.services.overlap import DEFAULT_THRESHOLD, candidate_threshold

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


overlap = _load("overlap")


def test_the_generated_set_has_four_variants_and_one_distinct_scene_per_original() -> None:
    """Same seed, same pictures; crops remove 2–5 %, resizes change the size, the distinct scene shares the sport."""
    dup = overlap.duplicate_set(3, seed=5, negatives="attributes", size=96)
    again = overlap.duplicate_set(3, seed=5, negatives="attributes", size=96)
    assert [p.kind for p in dup.probes[:5]] == ["jpeg", "resize", "crop", "brightness", "distinct"]
    assert len(dup.originals) == 3 and len(dup.probes) == 15 and len(dup.truth()) == 12
    assert all(a.encoded() == b.encoded() for a, b in zip(dup.probes, again.probes, strict=True))
    for probe in dup.probes:
        width, height = probe.image.size
        if probe.kind == "crop":
            assert 0.95 * 96 <= width <= 0.98 * 96 + 1 and 0.95 * 96 <= height <= 0.98 * 96 + 1
        elif probe.kind == "resize":
            assert width != 96 and (width <= 0.8 * 96 + 1 or width >= 1.25 * 96 - 1)
        else:
            assert (width, height) == (96, 96)
    assert {p.quality for p in dup.probes if p.kind == "jpeg"} <= set(range(30, 61))
    with pytest.raises(ValueError, match="negatives"):
        overlap.duplicate_set(1, seed=0, negatives="colour")


def test_the_sweep_counts_pairs_and_images_as_defined() -> None:
    """Two originals, three probes: one true pair missed at 2 bits, a false pair, per-variant recall."""
    dist = np.array([[1, 3, 9], [8, 2, 1]])
    truth = np.array([[True, False, False], [False, True, False]])
    group = overlap.Group(dist, truth, ["jpeg", "crop", "distinct"])
    low, high = overlap.sweep([group], [1, 3])
    assert low["recall"] == 0.5 and low["precision"] == 0.5 and low["false_pairs"] == 1
    assert low["recall_by_variant"] == {"jpeg": 1.0, "resize": None, "crop": 0.0, "brightness": None}
    assert low["false_match_rate"] == 0.25 and low["image_recall"] == 0.5 and low["image_precision"] == 0.5
    assert high["recall"] == 1.0 and high["precision"] == 0.5 and high["true_pairs_found"] == 2
    assert high["image_precision"] == pytest.approx(2 / 3, abs=1e-4)


def test_distances_of_packed_bits_equal_counting_differences() -> None:
    rng = np.random.default_rng(0)
    left, right = rng.random((4, 130)) < 0.5, rng.random((3, 130)) < 0.5
    want = (left[:, None, :] != right[None, :, :]).sum(axis=2)
    assert np.array_equal(overlap.distances(left, right), want)


def test_planted_pairs_are_within_the_threshold() -> None:
    left, right = overlap.planted_hashes(200, 500, 6, seed=3)
    planted = right[:: overlap.PLANTED_EVERY]
    nearest = [min(int(x ^ y).bit_count() for y in left.tolist()) for x in planted.tolist()]
    assert len(planted) == 10 and max(nearest) <= 6


def test_planted_pairs_pass_the_256_bit_verification_and_random_pairs_do_not() -> None:
    """The timing's second stage keeps exactly the planted pairs: their wide hashes differ only in the key bits."""
    left, right, fine = overlap.planted_pairs(300, 500, 12, seed=4)
    assert fine.left.shape == (300, 4) and np.array_equal(fine.left[:, 0], left)
    coarse = brute_force_pair_indices(left, right, 12)
    rows, cols, dist = brute_force_pair_indices(left, right, 12, fine=fine)
    assert set(cols.tolist()) == set(range(0, 500, overlap.PLANTED_EVERY)) and len(coarse[0]) >= len(rows)
    assert dist.max() <= 12  # planted: the key flips are the only differences


def test_two_stages_need_both_distances_within_their_thresholds() -> None:
    """A pair within the 256-bit threshold whose keys are past the candidate threshold is not predicted."""
    dist = np.array([[10, 70, 60]])
    key = np.array([[2, 2, candidate_threshold(64) + 1]])
    group = overlap.Group(dist, np.array([[True, False, True]]), ["jpeg", "distinct", "crop"], key)
    assert group.hits(64).tolist() == [[True, False, False]]
    assert overlap.Group(dist, group.truth, group.kinds).hits(64).tolist() == [[True, False, True]]


def test_a_tiny_run_measures_quality_and_timing() -> None:
    """A few seconds: every hash has a sweep, the two stages have their rows at the default, index and scan agree."""
    args = overlap.parse_args(
        ["--originals", "5", "--seeds", "1", "--negatives", "sport", "--sizes", "400,800", "--brute-sizes", "300"]
        + ["--repeats", "1"]
    )
    payload = overlap.run(args)
    assert set(payload["quality"]["sport"]) == {"phash8", "dhash8", "phash16", "key", "phash8+dhash8", "two_stage"}
    rows = payload["at_default"]["sport"]
    row = rows["two_stage"]
    assert row["threshold"] == DEFAULT_THRESHOLD and 0.0 <= row["precision"] <= 1.0
    assert row["recall_by_variant"]["jpeg"] == 1.0  # a re-encode alone never moves phash past the default
    assert rows["candidates"]["threshold"] == candidate_threshold(DEFAULT_THRESHOLD) == payload["timing"]["threshold"]
    assert rows["candidates"]["recall"] >= row["recall"]  # the second stage only removes pairs
    assert rows["before"]["threshold"] == 8 and rows["two_stage_pool"]["threshold"] == DEFAULT_THRESHOLD
    timing = payload["timing"]
    assert [scan["index_pairs_equal_brute_force"] for scan in timing["brute_force"]] == [True]
    assert [r["n_left"] for r in timing["index"]] == [400, 800]
    assert all(r["pairs_found"] >= r["planted"] for r in timing["index"])  # random key pairs fail the 256-bit check
    scan_s = timing["brute_force"][0]["seconds"]
    assert timing["index"][1]["all_pairs_seconds_extrapolated"] == round(scan_s * (800 / 300) ** 2, 1)
    assert len(timing["index_growth_exponent_between_sizes"]) == 1
