"""Leak detection: the same photo in two splits of a data set, or in two data sets, stored in ``image_overlaps``.

Two images overlap *exactly* when their files have the same sha256, and *nearly* when their
perceptual hashes (``images.phash``, the 256-bit ``imagehash.phash`` of ``data/phash.py``) differ
in at most ``threshold`` bits. Near pairs are found in two stages, never by comparing every pair:
candidates whose 64-bit index keys (the hashes' 8×8 lowest frequencies) are within
:func:`candidate_threshold` bits, through multi-index hashing (``vicap_jobs.data.hamming_index``),
each then kept only when the full 256-bit hashes are within ``threshold``; the distance reported
and stored (``image_overlaps.distance``) is the 256-bit one (0..256). Missing hashes are computed
first, once per content (``services.identity.fill_perceptual_hashes``). Only pairs across splits
are reported: a photo twice in one split does not leak anything. Every pair found is stored
(ordered ids, insert or skip, so re-running adds nothing twice); counts and examples per split
pair are returned.

Why (``bench/overlap.py`` → ``bench/results/overlap.json``): drawn sports scenes against four near
duplicates of each (JPEG quality 30–60; resized ×0.5–0.8 or ×1.25–1.5; 2–5 % cropped; brightness
×0.75–0.9 or ×1.1–1.25) and one distinct scene per original, 40 originals per group (the issue's
protocol), 10 groups; distinct = same sport (S) or same sport, players, shirt and ball (A). The
64-bit phash alone, the earlier form, at its best threshold (8 bits): recall / precision 0.966 /
0.985 (S), 0.958 / 0.964 (A), 0.81–0.88 with the 10 groups pooled (10× the non-duplicates per true
pair), and different scenes of one layout (a player on a red court, another on a blue one) 4–8
bits apart. Two-stage, ``DEFAULT_THRESHOLD = 64`` of 256 (candidates at 12 of 64):

    256-bit bits (keys)                  56 (10)        60 (11)        64 (12)        68 (12)
    S: recall / precision           0.949 / 1.000  0.968 / 1.000  0.979 / 0.999  0.987 / 0.995
       pooled precision                 0.997          0.984          0.959          0.935
    A: recall / precision           0.948 / 0.999  0.964 / 0.996  0.975 / 0.989  0.983 / 0.981
       pooled precision                 0.994          0.982          0.950          0.920

64 keeps recall near 98 % with precision at or above 95 % even pooled; crops, the weak spot (a crop
shifts every frequency), are found at 0.92 (S) / 0.90 (A), against 0.87 / 0.84 before. The
candidate threshold is ``3 × threshold / 16`` (12 at 64): the key's candidates hold 99.6 % (S) /
98.9 % (A) of the true pairs; at 16 they would hold 99.9 %, adding 0.1 (S) / 0.5 (A) points of
recall for 3–4× the index time (the probes grow with the radius) and slightly lower pooled
precision. A pair within ``threshold`` whose keys differ by more is not found: the two stages are
the definition of a near pair. ``MAX_THRESHOLD = 96``: there 0.6 % of same-sport non-duplicate
pairs already match (precision 0.78). Real photos are more varied than five drawn grounds; look at the
example pairs printed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, or_, select

from vicap_jobs.data.hamming_index import Fine, as_words, near_pair_indices
from vicap_jobs.data.phash import HASH_BITS, HEX_DIGITS, hamming, index_key
from vicap_jobs.db.base import utcnow
from vicap_jobs.db.bulk import insert_rows
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import SPLITS, Image, ImageOverlap
from vicap_jobs.errors import InputError
from vicap_jobs.services.datasets import get_dataset
from vicap_jobs.services.identity import fill_perceptual_hashes

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 64  # bits of the 256-bit hash
DEFAULT_EXAMPLES = 3
MAX_THRESHOLD = 96  # at 96 of 256 bits 0.6 % of unrelated same-sport pairs already match (bench sweep)
PAGE = 1000
INSERT_PAGE = 2000
NO_SPLIT = "none"


@dataclass(frozen=True)
class ImageKey:
    """What identifies one image's content: its sha256 and perceptual hash (None when unknown)."""

    id: int
    split: str
    file_name: str
    sha256: str | None
    phash: str | None


@dataclass(frozen=True)
class OverlapPair:
    """One image of the left group and one of the right that are the same photo."""

    left_id: int
    right_id: int
    left_file: str
    right_file: str
    kind: str  # exact | near
    distance: int


@dataclass(frozen=True)
class SplitPairOverlap:
    """Overlaps between two splits, e.g. ``uitviic/train`` and ``uitviic/test``."""

    left: str
    right: str
    n_left: int
    n_right: int
    exact: int
    near: int
    right_overlapping: int  # right-hand images with at least one copy on the left
    examples: list[OverlapPair]

    @property
    def total(self) -> int:
        return self.exact + self.near


@dataclass(frozen=True)
class OverlapReport:
    """What ``find_overlaps`` found: per split pair counts and examples, and what it could not check."""

    dataset_a: str
    dataset_b: str | None
    threshold: int
    split_pairs: list[SplitPairOverlap]
    n_images: int
    n_without_phash: int
    n_stored: int
    dataset_ids: tuple[int, ...]


def find_overlaps(
    *,
    db: Engine,
    dataset_a: str,
    dataset_b: str | None = None,
    threshold: int = DEFAULT_THRESHOLD,
    examples: int = DEFAULT_EXAMPLES,
) -> OverlapReport:
    """Exact and near duplicates between every two splits of one data set, or every split of A and of B.

    Missing perceptual hashes are computed first; every pair found is stored in ``image_overlaps``.
    """
    _check_threshold(threshold)
    if examples < 0:
        raise InputError(f"--examples must be 0 or more, got {examples}")
    first = get_dataset(db=db, name=dataset_a)
    second = get_dataset(db=db, name=dataset_b) if dataset_b is not None and dataset_b != dataset_a else None
    ids = (first.id,) if second is None else (first.id, second.id)
    fill_missing_hashes(db=db, dataset_ids=ids)
    by_split_a = _by_split(_dataset_keys(db, first.id))
    if second is None:
        names = sorted(by_split_a, key=_split_order)
        plan = [
            (f"{first.name}/{a}", by_split_a[a], f"{first.name}/{b}", by_split_a[b])
            for i, a in enumerate(names)
            for b in names[i + 1 :]
        ]
        everything = [key for keys in by_split_a.values() for key in keys]
    else:
        by_split_b = _by_split(_dataset_keys(db, second.id))
        plan = [
            (f"{first.name}/{a}", by_split_a[a], f"{second.name}/{b}", by_split_b[b])
            for a in sorted(by_split_a, key=_split_order)
            for b in sorted(by_split_b, key=_split_order)
        ]
        everything = [key for group in (by_split_a, by_split_b) for keys in group.values() for key in keys]
    results: list[SplitPairOverlap] = []
    found: list[OverlapPair] = []
    for left_name, left, right_name, right in plan:
        pairs = match_groups(left, right, threshold)
        found.extend(pairs)
        exact = sum(1 for p in pairs if p.kind == "exact")
        results.append(
            SplitPairOverlap(
                left_name,
                right_name,
                len(left),
                len(right),
                exact,
                len(pairs) - exact,
                len({p.right_id for p in pairs}),
                sorted(pairs, key=_example_order)[:examples],
            )
        )
    stored = store_pairs(db=db, pairs=found)
    return OverlapReport(
        first.name,
        second.name if second is not None else None,
        threshold,
        results,
        len(everything),
        sum(1 for key in everything if key.phash is None),
        stored,
        ids,
    )


def match_groups(left: Sequence[ImageKey], right: Sequence[ImageKey], threshold: int) -> list[OverlapPair]:
    """Every (left, right) pair with the same sha256 (exact) or phashes within ``threshold`` bits (near).

    An image present in both groups pairs with itself (exact, distance 0). Near: see :func:`near_duplicates`.
    """
    by_sha: dict[str, list[ImageKey]] = defaultdict(list)
    for key in left:
        if key.sha256:
            by_sha[key.sha256].append(key)
    pairs: list[OverlapPair] = []
    for r in right:
        for lft in by_sha.get(r.sha256 or "", ()):
            distance = hamming(lft.phash, r.phash) if lft.phash and r.phash else 0
            pairs.append(OverlapPair(lft.id, r.id, lft.file_name, r.file_name, "exact", distance))
    left_hashed = [k for k in left if k.phash]
    right_hashed = [k for k in right if k.phash]
    if left_hashed and right_hashed:
        left_by_id = {k.id: k for k in left_hashed}
        right_by_id = {k.id: k for k in right_hashed}
        for left_id, right_id, distance in near_duplicates(
            [(k.id, k.phash or "") for k in left_hashed], [(k.id, k.phash or "") for k in right_hashed], threshold
        ):
            a, b = left_by_id[left_id], right_by_id[right_id]
            if a.sha256 and a.sha256 == b.sha256:
                continue  # already an exact pair
            pairs.append(OverlapPair(a.id, b.id, a.file_name, b.file_name, "near", distance))
    return pairs


def candidate_threshold(threshold: int) -> int:
    """The index keys' threshold (of 64 bits) for a 256-bit threshold: 3/16 of it, 12 at the default 64."""
    return threshold * 3 // 16


def near_duplicates(
    left: Sequence[tuple[int, str]], right: Sequence[tuple[int, str]], threshold: int
) -> list[tuple[int, int, int]]:
    """(left id, right id, 256-bit distance) of the pairs whose keys are within the candidate threshold
    and whose hashes are within ``threshold`` bits, sorted."""
    if not left or not right:
        return []
    left_keys, right_keys = _index_keys(left), _index_keys(right)
    fine = Fine(as_words([h for _, h in left], HASH_BITS), as_words([h for _, h in right], HASH_BITS), threshold)
    rows, cols, dist = near_pair_indices(left_keys, right_keys, candidate_threshold(threshold), fine=fine)
    return [(left[i][0], right[j][0], d) for i, j, d in zip(rows.tolist(), cols.tolist(), dist.tolist(), strict=True)]


def _index_keys(hashes: Sequence[tuple[int, str]]) -> np.ndarray:
    return np.array([index_key(value) for _, value in hashes], dtype=np.uint64)


def store_pairs(*, db: Engine, pairs: Iterable[OverlapPair]) -> int:
    """Insert the pairs not stored yet (smaller id first; an image with itself is not a pair); returns how many."""
    rows: dict[tuple[int, int], dict[str, object]] = {}
    now = utcnow()
    for pair in pairs:
        a, b = sorted((pair.left_id, pair.right_id))
        if a != b:
            rows.setdefault(
                (a, b),
                {"image_a_id": a, "image_b_id": b, "kind": pair.kind, "distance": pair.distance, "created_at": now},
            )
    values = list(rows.values())
    inserted = 0
    for start in range(0, len(values), INSERT_PAGE):
        with session_scope(db) as session:
            insert, parameters = insert_rows(session, ImageOverlap, values[start : start + INSERT_PAGE])
            statement = insert.on_conflict_do_nothing(index_elements=["image_a_id", "image_b_id"]).returning(
                ImageOverlap.id
            )
            inserted += len(list(session.connection().execute(statement, parameters).scalars()))
    return inserted


def fill_missing_hashes(*, db: Engine, dataset_ids: Iterable[int] = (), image_ids: Iterable[int] = ()) -> int:
    """Compute the perceptual hash of every listed image (or image of the data sets) that has a file but no hash."""
    with session_scope(db) as session:
        missing = set(
            session.scalars(
                select(Image.id).where(
                    Image.dataset_id.in_(list(dataset_ids)), Image.phash.is_(None), Image.sha256.is_not(None)
                )
            )
        )
    wanted = list(dict.fromkeys(image_ids))
    for start in range(0, len(wanted), PAGE):
        with session_scope(db) as session:
            missing.update(
                session.scalars(
                    select(Image.id).where(
                        Image.id.in_(wanted[start : start + PAGE]), Image.phash.is_(None), Image.sha256.is_not(None)
                    )
                )
            )
    if not missing:
        return 0
    log.info("computing the perceptual hash of %d image(s), once per content", len(missing))
    return fill_perceptual_hashes(db=db, image_ids=sorted(missing))


def training_overlap(
    *, db: Engine, evaluated_ids: Collection[int], training_dataset_id: int, threshold: int = DEFAULT_THRESHOLD
) -> int | None:
    """How many of ``evaluated_ids`` are exact or near duplicates of the training data set's train split.

    Pairs stored earlier (``dataset overlap`` at any threshold) count too; the pairs found now are
    stored. None when the training data set has no train images to compare with.
    """
    evaluated = set(evaluated_ids)
    training_query = select(Image.id).where(Image.dataset_id == training_dataset_id, Image.split == "train")
    with session_scope(db) as session:
        training_ids = list(session.scalars(training_query))
    if not training_ids:
        return None
    if not evaluated:
        return 0
    fill_missing_hashes(db=db, image_ids=[*evaluated, *training_ids])
    left = _keys(db, sorted(evaluated))
    right = _dataset_keys(db, training_dataset_id, split="train")
    pairs = match_groups(left, right, threshold)
    store_pairs(db=db, pairs=pairs)
    flagged = {pair.left_id for pair in pairs}
    training = set(training_ids)
    with session_scope(db) as session:
        stored = session.execute(
            select(ImageOverlap.image_a_id, ImageOverlap.image_b_id).where(
                or_(ImageOverlap.image_a_id.in_(training_query), ImageOverlap.image_b_id.in_(training_query))
            )
        ).all()
    for a, b in stored:
        if a in training and b in evaluated:
            flagged.add(b)
        if b in training and a in evaluated:
            flagged.add(a)
    return len(flagged)


def _dataset_keys(db: Engine, dataset_id: int, split: str | None = None) -> list[ImageKey]:
    query = select(Image.id, Image.split, Image.file_name, Image.sha256, Image.phash).where(
        Image.dataset_id == dataset_id
    )
    if split is not None:
        query = query.where(Image.split == split)
    with session_scope(db) as session:
        return [_key(*row) for row in session.execute(query.order_by(Image.id))]


def _keys(db: Engine, image_ids: Sequence[int]) -> list[ImageKey]:
    keys: list[ImageKey] = []
    for start in range(0, len(image_ids), PAGE):
        with session_scope(db) as session:
            keys.extend(
                _key(*row)
                for row in session.execute(
                    select(Image.id, Image.split, Image.file_name, Image.sha256, Image.phash)
                    .where(Image.id.in_(image_ids[start : start + PAGE]))
                    .order_by(Image.id)
                )
            )
    return keys


def _key(image_id: int, split: str | None, file_name: str, sha256: str | None, phash: str | None) -> ImageKey:
    if phash is not None and len(phash) != HEX_DIGITS:
        phash = None  # not this hash's form (a store hashed before the 256-bit hash): counted as without one
    return ImageKey(image_id, split or NO_SPLIT, file_name, sha256, phash)


def _by_split(keys: Iterable[ImageKey]) -> dict[str, list[ImageKey]]:
    groups: dict[str, list[ImageKey]] = defaultdict(list)
    for key in keys:
        groups[key.split].append(key)
    return dict(groups)


def _split_order(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def _example_order(pair: OverlapPair) -> tuple[int, int, int, int]:
    return (0 if pair.kind == "exact" else 1, pair.distance, pair.left_id, pair.right_id)


def _check_threshold(threshold: int) -> None:
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise InputError(f"--threshold must be between 0 and {MAX_THRESHOLD} bits (of {HASH_BITS}), got {threshold}")
