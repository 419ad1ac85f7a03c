"""Leak detection: how well perceptual hashes find near-duplicate photos, and how fast the index finds pairs.

Quality. Drawn sports scenes (``vicap_jobs.data.synth_scenes``, 224 px, saved as JPEG quality 90)
are the "training" originals; the "evaluated" side holds four near duplicates of each original
and one distinct scene per original:

* ``jpeg``: re-encoded at quality 30–60;
* ``resize``: scaled by 0.5–0.8 or 1.25–1.5 (Lanczos);
* ``crop``: 2–5 % of the width and of the height cut off, split at random between the two sides;
* ``brightness``: pixel values × 0.75–0.9 or × 1.1–1.25;
* ``distinct``: another drawing of the original's kind (``--negatives sport``: same sport, the
  other attributes drawn again; ``attributes``: same sport, players, shirt and ball position,
  so only the jitter and the seed differ — the hardest non-duplicates these scenes allow).

A pair is predicted when the Hamming distance of the two hashes is within the threshold. Recall
is over the true (original, variant) pairs, precision over every predicted pair between the two
sides; "image" recall/precision ask instead whether each evaluated image is flagged at all (what
the evaluation warning counts). Precision depends on how many non-duplicate pairs there are per
true pair: the issue's protocol (40 originals × 4 variants + 40 distinct, 50 non-duplicate pairs
per true pair) is run over several seeds and pooled per group; the ``pool`` rows put all groups
on one side each (10× more non-duplicates per true pair), and ``false_match_rate`` (predicted
non-duplicate pairs / all non-duplicate pairs) is the size-free figure. Hashes measured: ``phash16`` (the 256-bit
``imagehash.phash`` ``images.phash`` stores), ``key`` (its 8×8 low-frequency corner, the 64-bit
index key), ``two_stage`` (what the service does: phash16 within the threshold where the keys are
within ``candidate_threshold``), and for comparison ``phash8`` (the 64-bit ``imagehash.phash``
stored before), ``dhash8`` and ``phash8+dhash8`` (128 bits, summed distances).

Timing. Uniform random 64-bit keys, each followed by 192 random bits (the 256-bit hash), with
planted near pairs (one per 50 hashes, keys at distances spread over 0..threshold, the rest of the
hash shared): the multi-index search at the candidate threshold with every candidate verified on
256 bits (``vicap_jobs.data.hamming_index``) at 12.5k/25k/50k/100k × the same, and the numpy
all-pairs scan (verified the same way) at 5k × 5k and 12.5k × 12.5k, where both must return the
same pairs. Best of ``--repeats`` runs each (the machine is shared).

Measured on 2 shared cores (bench/results/overlap.json, 2026-11-30). Two stages at the default
(64 of 256 bits, keys within 12): recall 0.979 / precision 0.999 (distinct = same sport), 0.975 /
0.989 (same attributes); crops alone 0.92 / 0.90; pooled precision 0.96 / 0.95. Before (phash8 at
8 bits): 0.966 / 0.985, 0.958 / 0.964, crops 0.87 / 0.84, pooled 0.88 / 0.81. The sweep and the
reasons are in the docstring of ``vicap_jobs/services/overlap.py``. Timing at 12 bits: index
0.056 s and 0.31 s for 5k × 5k and 12.5k × 12.5k, all pairs 0.19 s and 1.30 s (same pairs both
times); index 12.5k / 25k / 50k / 100k: 0.30 / 0.99 / 3.2 / 10.7 s against ~1.3 / 5.2 / 21 / 83 s
for all pairs (extrapolated): time ~ n**1.72 (all pairs n**2.12), 6.5× faster at 50k. (At 8 bits,
the 64-bit hash's threshold, the index took 0.46 s at 50k; a 12-bit radius needs more probes.)

    python bench/overlap.py                      # ~3 min on 2 cores
    python bench/overlap.py --seeds 2 --sizes 2000,4000 --brute-sizes 1000   # a quick run
"""

from __future__ import annotations

import argparse
import io
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from vicap_jobs.data.hamming_index import (  # noqa: E402
    Fine,
    brute_force_pair_indices,
    choose_blocks,
    near_pair_indices,
    popcount,
)
from vicap_jobs.data.phash import index_key, perceptual_hash  # noqa: E402
from vicap_jobs.data.synth_scenes import (  # noqa: E402
    BALL_POSITIONS,
    PLAYER_COUNTS,
    SHIRTS,
    SPORTS,
    SceneAttributes,
    render_scene,
)
from vicap_jobs.services.overlap import DEFAULT_THRESHOLD, candidate_threshold  # noqa: E402

VARIANTS = ("jpeg", "resize", "crop", "brightness")
ORIGINAL_QUALITY = 90
SIZE = 224
THRESHOLDS_64 = tuple(range(2, 17, 2))  # odd distances never occur between two phash8 hashes (32 bits set each)
KEY_THRESHOLDS = tuple(range(4, 25, 2))
THRESHOLDS_256 = (40, 48, 56, 60, 64, 68, 72, 80, 88, 96)
BEFORE_THRESHOLD = 8  # the 64-bit phash's default before the two stages
PLANTED_EVERY = 50


# --------------------------------------------------------------------------- the generated set


@dataclass(frozen=True)
class Picture:
    """One file of the generated set: its name, pixels and JPEG quality; ``source`` is its original's index."""

    name: str
    image: Image.Image
    quality: int
    kind: str  # original | jpeg | resize | crop | brightness | distinct
    source: int | None

    def encoded(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, "JPEG", quality=self.quality)
        return buffer.getvalue()

    def decoded(self) -> Image.Image:
        """The pixels as a reader of the saved file sees them."""
        return Image.open(io.BytesIO(self.encoded())).convert("RGB")


@dataclass(frozen=True)
class DuplicateSet:
    """Originals (the training side) and probes (their variants and distinct scenes: the evaluated side)."""

    originals: list[Picture]
    probes: list[Picture]

    def truth(self) -> set[tuple[int, int]]:
        """(original index, probe index) of every true near-duplicate pair."""
        return {(p.source, j) for j, p in enumerate(self.probes) if p.source is not None}


def duplicate_set(n_originals: int, *, seed: int, negatives: str = "sport", size: int = SIZE) -> DuplicateSet:
    """``n_originals`` scenes, four variants of each and one distinct scene per original, all from ``seed``."""
    if negatives not in ("sport", "attributes"):
        raise ValueError(f"negatives must be 'sport' or 'attributes', got {negatives!r}")
    rng = random.Random(seed)
    originals: list[Picture] = []
    probes: list[Picture] = []
    for i in range(n_originals):
        attrs = _attributes(SPORTS[i % len(SPORTS)], rng)
        original = Picture(
            f"o{seed}-{i:04d}.jpg", render_scene(attrs, size=size, seed=rng.getrandbits(32)), ORIGINAL_QUALITY,
            "original", None,
        )  # fmt: skip
        originals.append(original)
        seen = original.decoded()
        variant_rng = random.Random(rng.getrandbits(32))
        for kind in VARIANTS:
            image, quality = _VARIANT_MAKERS[kind](seen, variant_rng)
            probes.append(Picture(f"v{seed}-{i:04d}-{kind}.jpg", image, quality, kind, i))
        other = attrs if negatives == "attributes" else _attributes(attrs.sport, rng)
        distinct = render_scene(other, size=size, seed=rng.getrandbits(32))
        probes.append(Picture(f"d{seed}-{i:04d}.jpg", distinct, ORIGINAL_QUALITY, "distinct", None))
    return DuplicateSet(originals, probes)


def _attributes(sport: str, rng: random.Random) -> SceneAttributes:
    return SceneAttributes(sport, rng.choice(PLAYER_COUNTS), rng.choice(SHIRTS), rng.choice(BALL_POSITIONS))


def _jpeg(image: Image.Image, rng: random.Random) -> tuple[Image.Image, int]:
    return image, rng.randint(30, 60)


def _resize(image: Image.Image, rng: random.Random) -> tuple[Image.Image, int]:
    scale = rng.uniform(0.5, 0.8) if rng.random() < 0.5 else rng.uniform(1.25, 1.5)
    width, height = image.size
    return image.resize((round(width * scale), round(height * scale)), Image.Resampling.LANCZOS), ORIGINAL_QUALITY


def _crop(image: Image.Image, rng: random.Random) -> tuple[Image.Image, int]:
    width, height = image.size
    cut_x, cut_y = round(width * rng.uniform(0.02, 0.05)), round(height * rng.uniform(0.02, 0.05))
    left, top = rng.randint(0, cut_x), rng.randint(0, cut_y)
    return image.crop((left, top, width - cut_x + left, height - cut_y + top)), ORIGINAL_QUALITY


def _brightness(image: Image.Image, rng: random.Random) -> tuple[Image.Image, int]:
    factor = rng.uniform(0.75, 0.9) if rng.random() < 0.5 else rng.uniform(1.1, 1.25)
    return ImageEnhance.Brightness(image).enhance(factor), ORIGINAL_QUALITY


_VARIANT_MAKERS: dict[str, Callable[[Image.Image, random.Random], tuple[Image.Image, int]]] = {
    "jpeg": _jpeg,
    "resize": _resize,
    "crop": _crop,
    "brightness": _brightness,
}


def write_duplicate_set(dup: DuplicateSet, originals_dir: Path, probes_dir: Path) -> None:
    """Save the originals and the probes as the JPEG files they stand for."""
    for folder, pictures in ((originals_dir, dup.originals), (probes_dir, dup.probes)):
        folder.mkdir(parents=True, exist_ok=True)
        for picture in pictures:
            (folder / picture.name).write_bytes(picture.encoded())


# --------------------------------------------------------------------------- hashes and the sweep


def _bits(hash_object: Any) -> np.ndarray:
    return np.asarray(hash_object.hash, dtype=bool).ravel()


def _hex_bits(value: str | int, bits: int) -> np.ndarray:
    number = int(value, 16) if isinstance(value, str) else value
    return np.unpackbits(np.frombuffer(number.to_bytes(bits // 8, "big"), dtype=np.uint8)).astype(bool)


def _hashers() -> dict[str, Callable[[Image.Image], np.ndarray]]:
    """name → picture → bits (bool array). phash16 is exactly what ``images.phash`` stores, key its index key.

    phash8 is the 64-bit ``imagehash.phash`` stored before (the drawn pictures are too small to be box-reduced).
    """

    def phash8(image: Image.Image) -> np.ndarray:
        return _bits(imagehash.phash(image.convert("L"), 8))

    return {
        "phash8": phash8,
        "dhash8": lambda image: _bits(imagehash.dhash(image, 8)),
        "phash16": lambda image: _hex_bits(perceptual_hash(image), 256),
        "key": lambda image: _hex_bits(index_key(perceptual_hash(image)), 64),
        "phash8+dhash8": lambda image: np.concatenate([phash8(image), _bits(imagehash.dhash(image, 8))]),
    }


THRESHOLDS: dict[str, tuple[int, ...]] = {
    "phash8": THRESHOLDS_64,
    "dhash8": THRESHOLDS_64,
    "phash16": THRESHOLDS_256,
    "key": KEY_THRESHOLDS,
    "phash8+dhash8": tuple(range(8, 33, 4)),
    "two_stage": THRESHOLDS_256,
}


def distances(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Hamming distances of every row of ``left`` to every row of ``right`` (bool bit matrices)."""
    words_left, words_right = _pack(left), _pack(right)
    out = np.zeros((len(left), len(right)), dtype=np.int64)
    for w in range(words_left.shape[1]):
        out += popcount(words_left[:, w, None] ^ words_right[None, :, w])
    return out


def _pack(bits: np.ndarray) -> np.ndarray:
    """(n, b) bools → (n, ceil(b / 64)) uint64."""
    padded = np.zeros((bits.shape[0], -(-bits.shape[1] // 64) * 64), dtype=bool)
    padded[:, : bits.shape[1]] = bits
    return np.packbits(padded, axis=1).view(">u8").astype(np.uint64)


@dataclass(frozen=True)
class Group:
    """Hash distances of originals × probes, with which pairs are true and each probe's kind."""

    dist: np.ndarray  # (originals, probes)
    truth: np.ndarray  # bool, same shape
    kinds: list[str]  # per probe
    key_dist: np.ndarray | None = None  # two stages: index-key distances, within candidate_threshold(threshold) too

    def hits(self, threshold: int) -> np.ndarray:
        hit = self.dist <= threshold
        return hit if self.key_dist is None else hit & (self.key_dist <= candidate_threshold(threshold))


def hash_pools(sets: Sequence[DuplicateSet]) -> dict[str, tuple[Group, list[Group]]]:
    """Per hash: every original of every set against every probe of every set (the pool), and each set's own block.

    Every picture is decoded from its JPEG bytes once and hashed by each hash. ``two_stage`` is what
    the service does: phash16 distances where the keys are within the candidate threshold.
    """
    originals = [p.decoded() for dup in sets for p in dup.originals]
    probes = [p.decoded() for dup in sets for p in dup.probes]
    truth = np.zeros((len(originals), len(probes)), dtype=bool)
    bounds: list[tuple[int, int, int, int]] = []
    r = c = 0
    for dup in sets:
        for i, j in dup.truth():
            truth[r + i, c + j] = True
        bounds.append((r, r + len(dup.originals), c, c + len(dup.probes)))
        r, c = r + len(dup.originals), c + len(dup.probes)
    kinds = [p.kind for dup in sets for p in dup.probes]
    pools: dict[str, tuple[Group, list[Group]]] = {}
    for name, hasher in _hashers().items():
        left = np.stack([hasher(image) for image in originals])
        right = np.stack([hasher(image) for image in probes])
        pool = Group(distances(left, right), truth, kinds)
        groups = [Group(pool.dist[r0:r1, c0:c1], truth[r0:r1, c0:c1], kinds[c0:c1]) for r0, r1, c0, c1 in bounds]
        pools[name] = (pool, groups)
    fine, key = pools["phash16"], pools["key"]
    pools["two_stage"] = (
        Group(fine[0].dist, truth, kinds, key[0].dist),
        [Group(f.dist, f.truth, f.kinds, k.dist) for f, k in zip(fine[1], key[1], strict=True)],
    )
    return pools


def sweep(groups: Sequence[Group], thresholds: Sequence[int]) -> list[dict[str, Any]]:
    """Recall, precision, per-variant recall and false-match rate per threshold, counts summed over the groups."""
    rows = []
    for threshold in thresholds:
        tp = fp = positives = negatives = 0
        flagged_true = flagged_false = dup_images = 0
        by_kind = {kind: [0, 0] for kind in VARIANTS}
        for g in groups:
            hit = g.hits(threshold)
            tp += int((hit & g.truth).sum())
            fp += int((hit & ~g.truth).sum())
            positives += int(g.truth.sum())
            negatives += int((~g.truth).sum())
            is_dup = g.truth.any(axis=0)
            flagged = hit.any(axis=0)
            flagged_true += int((flagged & is_dup).sum())
            flagged_false += int((flagged & ~is_dup).sum())
            dup_images += int(is_dup.sum())
            found = (hit & g.truth).any(axis=0)
            for j, kind in enumerate(g.kinds):
                if kind in by_kind:
                    by_kind[kind][0] += int(found[j])
                    by_kind[kind][1] += 1
        rows.append(
            {
                "threshold": threshold,
                "recall": _ratio(tp, positives),
                "precision": _ratio(tp, tp + fp),
                "true_pairs_found": tp,
                "false_pairs": fp,
                "false_match_rate": _ratio(fp, negatives, digits=6),
                "image_recall": _ratio(flagged_true, dup_images),
                "image_precision": _ratio(flagged_true, flagged_true + flagged_false),
                "recall_by_variant": {kind: _ratio(*counts) if counts[1] else None for kind, counts in by_kind.items()},
            }
        )
    return rows


def _ratio(num: int, den: int, digits: int = 4) -> float:
    return round(num / den, digits) if den else 1.0


def measure_quality(n_originals: int, seeds: Sequence[int], negatives: str) -> dict[str, Any]:
    """The sweep per hash: the issue's protocol per group (counts summed over seeds), and all groups as one pool."""
    sets = [duplicate_set(n_originals, seed=seed, negatives=negatives) for seed in seeds]
    return {
        name: {"per_group": sweep(groups, THRESHOLDS[name]), "pool": sweep([pool], THRESHOLDS[name])}
        for name, (pool, groups) in hash_pools(sets).items()
    }


# --------------------------------------------------------------------------- timing


def planted_hashes(n_left: int, n_right: int, threshold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random hashes; every PLANTED_EVERY-th right hash is a copy of a left one with 0..threshold bits flipped."""
    left, right, _ = planted_pairs(n_left, n_right, threshold, seed)
    return left, right


def planted_pairs(n_left: int, n_right: int, threshold: int, seed: int) -> tuple[np.ndarray, np.ndarray, Fine]:
    """:func:`planted_hashes` as 64-bit keys, and 256-bit hashes for the second stage (``Fine``, threshold 64).

    Each 256-bit hash is its key followed by 192 random bits; a planted copy shares its source's
    random bits, so it passes the verification and the rest (~96 bits apart) do not.
    """
    rng = np.random.default_rng(seed)
    left = rng.integers(0, np.iinfo(np.uint64).max, size=n_left, dtype=np.uint64, endpoint=True)
    right = rng.integers(0, np.iinfo(np.uint64).max, size=n_right, dtype=np.uint64, endpoint=True)
    tails_left = rng.integers(0, np.iinfo(np.uint64).max, size=(n_left, 3), dtype=np.uint64, endpoint=True)
    tails_right = rng.integers(0, np.iinfo(np.uint64).max, size=(n_right, 3), dtype=np.uint64, endpoint=True)
    targets = np.arange(0, n_right, PLANTED_EVERY)
    sources = rng.integers(0, n_left, size=len(targets))
    for target, source in zip(targets, sources, strict=True):
        flips = rng.choice(64, size=int(rng.integers(0, threshold + 1)), replace=False)
        mask = np.uint64(sum(1 << int(bit) for bit in flips))
        right[target] = left[source] ^ mask
        tails_right[target] = tails_left[source]
    fine = Fine(np.column_stack([left, tails_left]), np.column_stack([right, tails_right]), DEFAULT_THRESHOLD)
    return left, right, fine


def _best_time(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure_timing(sizes: Sequence[int], brute_sizes: Sequence[int], threshold: int, repeats: int) -> dict[str, Any]:
    """Index seconds per size (n × n); the all-pairs scan at ``brute_sizes``, where both must return the same pairs.

    ``threshold`` is the keys' (the candidate threshold); every candidate is verified with its
    256-bit hash as the service does. Each index size also gets the all-pairs time extrapolated
    from the largest scan measured (it is exactly quadratic) and the speed-up over it.
    """
    scans = []
    for n in brute_sizes:
        left, right, fine = planted_pairs(n, n, threshold, seed=n)
        index_s, index_pairs = _best_time(partial(near_pair_indices, left, right, threshold, fine=fine), repeats)
        scan_s, scan_pairs = _best_time(partial(brute_force_pair_indices, left, right, threshold, fine=fine), repeats)
        scans.append(
            {
                "n_left": n,
                "n_right": n,
                "seconds": round(scan_s, 3),
                "index_seconds": round(index_s, 3),
                "pairs": len(scan_pairs[0]),
                "index_pairs_equal_brute_force": all(
                    np.array_equal(a, b) for a, b in zip(index_pairs, scan_pairs, strict=True)
                ),
            }
        )
    reference = scans[-1] if scans else None
    rows = []
    for n in sizes:
        left, right, fine = planted_pairs(n, n, threshold, seed=n)
        seconds, pairs = _best_time(lambda: near_pair_indices(left, right, threshold, fine=fine), repeats)  # noqa: B023
        plan = choose_blocks(n, n, threshold)
        row: dict[str, Any] = {
            "n_left": n,
            "n_right": n,
            "seconds": round(seconds, 3),
            "pairs_found": len(pairs[0]),
            "planted": len(range(0, n, PLANTED_EVERY)),
            "blocks": plan.blocks,
            "block_widths": list(plan.widths),
            "radii": list(plan.radii),
        }
        if reference is not None:
            all_pairs_s = reference["seconds"] * (n / reference["n_left"]) ** 2
            row["all_pairs_seconds_extrapolated"] = round(all_pairs_s, 1)
            row["speedup_over_all_pairs"] = round(all_pairs_s / seconds, 1) if seconds else None
        rows.append(row)
    return {
        "threshold": threshold,
        "fine_threshold": DEFAULT_THRESHOLD,
        "hashes": f"uniform random 64-bit keys + 192 random bits, one planted near pair per {PLANTED_EVERY} right-hand "
        "hashes; candidates verified on the 256 bits",
        "brute_force": scans,
        "brute_force_growth_exponent": _exponents(scans),
        "index": rows,
        "index_growth_exponent_between_sizes": _exponents(rows),
        "index_growth_exponent_first_to_last": next(iter(_exponents([rows[0], rows[-1]])), None) if rows else None,
        "note": "time ~ n ** exponent; an all-pairs scan has exponent 2",
    }


def _exponents(rows: Sequence[dict[str, Any]]) -> list[float]:
    """log(t2 / t1) / log(n2 / n1) between consecutive rows."""
    return [
        round(math.log(b["seconds"] / a["seconds"]) / math.log(b["n_left"] / a["n_left"]), 2)
        for a, b in zip(rows, rows[1:], strict=False)
        if a["seconds"] > 0 and b["seconds"] > 0
    ]


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--originals", type=int, default=40, help="originals per generated group (the issue's 40)")
    parser.add_argument("--seeds", type=int, default=10, help="generated groups (seeds 0..N-1)")
    parser.add_argument("--negatives", choices=("sport", "attributes", "both"), default="both")
    parser.add_argument("--sizes", default="12500,25000,50000,100000", help="n for the n × n index timings")
    parser.add_argument("--brute-sizes", default="5000,12500", help="n for the all-pairs baseline (n × n)")
    parser.add_argument(
        "--threshold",
        type=int,
        default=None,
        help="keys' threshold for the timings (default: the service's candidate threshold)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="overlap", help="result file bench/results/<name>.json")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    threshold = candidate_threshold(DEFAULT_THRESHOLD) if args.threshold is None else args.threshold
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    kinds = ("sport", "attributes") if args.negatives == "both" else (args.negatives,)
    start = time.perf_counter()
    quality = {negatives: measure_quality(args.originals, range(args.seeds), negatives) for negatives in kinds}
    quality_s = time.perf_counter() - start
    brute_sizes = [int(s) for s in args.brute_sizes.split(",") if s.strip()]
    timing = measure_timing(sizes, brute_sizes, threshold, args.repeats)
    at_default = {negatives: _at_default(result) for negatives, result in quality.items()}
    return {
        "default_threshold": DEFAULT_THRESHOLD,
        "protocol": {
            "originals_per_group": args.originals,
            "groups": args.seeds,
            "variants": list(VARIANTS),
            "distinct_per_original": 1,
            "size_px": SIZE,
            "original_jpeg_quality": ORIGINAL_QUALITY,
        },
        "candidate_threshold": candidate_threshold(DEFAULT_THRESHOLD),
        "before_threshold": BEFORE_THRESHOLD,
        "at_default": at_default,
        "quality": quality,
        "quality_seconds": round(quality_s, 1),
        "timing": timing,
    }


def _row_at(rows: Sequence[dict[str, Any]], threshold: int) -> dict[str, Any] | None:
    return next((row for row in rows if row["threshold"] == threshold), None)


def _at_default(result: dict[str, Any]) -> dict[str, Any]:
    """The service's figures (two stages at the default), its candidates alone, and the 64-bit hash before."""
    return {
        "two_stage": _row_at(result["two_stage"]["per_group"], DEFAULT_THRESHOLD),
        "two_stage_pool": _row_at(result["two_stage"]["pool"], DEFAULT_THRESHOLD),
        "candidates": _row_at(result["key"]["per_group"], candidate_threshold(DEFAULT_THRESHOLD)),
        "before": _row_at(result["phash8"]["per_group"], BEFORE_THRESHOLD),
        "before_pool": _row_at(result["phash8"]["pool"], BEFORE_THRESHOLD),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    payload = run(args)
    path = write_result(args.name, payload)
    for negatives, rows in payload["at_default"].items():
        for name, row in rows.items():
            if row:
                print(
                    f"{name} at {row['threshold']} bits, distinct = same {negatives}: recall {row['recall']:.3f} "
                    f"precision {row['precision']:.3f} (crop recall {row['recall_by_variant']['crop']:.3f})"
                )
    timing = payload["timing"]
    for scan in timing["brute_force"]:
        print(
            f"{scan['n_left']}×{scan['n_right']}: index {scan['index_seconds']} s, all pairs {scan['seconds']} s, "
            f"same pairs: {scan['index_pairs_equal_brute_force']}"
        )
    for row in timing["index"]:
        print(
            f"index {row['n_left']}×{row['n_right']}: {row['seconds']} s ({row['blocks']} blocks, radii "
            f"{row['radii']}), {row['pairs_found']} pairs; all pairs ~{row.get('all_pairs_seconds_extrapolated')} s"
        )
    print(
        f"growth exponents: index {timing['index_growth_exponent_between_sizes']} "
        f"(first to last {timing['index_growth_exponent_first_to_last']}), all pairs {timing['brute_force_growth_exponent']}"
        f"; wrote {path}"
    )


if __name__ == "__main__":
    main()
