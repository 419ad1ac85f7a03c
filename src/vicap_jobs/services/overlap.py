"""Leak detection: the same photo in two splits of a data set, or in two data sets, stored in ``image_overlaps``.

Two images overlap *exactly* when their files have the same sha256, and *nearly* when their
perceptual hashes (``images.phash``, 64-bit ``imagehash.phash``) differ in at most ``threshold``
bits. Near pairs are found with multi-index hashing (``vicap_jobs.data.hamming_index``), never by
comparing every pair; missing hashes are computed first, once per content
(``services.identity.fill_perceptual_hashes``). Only pairs across splits are reported: a photo
twice in one split does not leak anything. Every pair found is stored (ordered ids, insert or
skip, so re-running adds nothing twice); counts and examples per split pair are returned.

Why ``DEFAULT_THRESHOLD = 8`` bits (``bench/overlap.py`` → ``bench/results/overlap.json``): drawn
sports scenes against four near duplicates of each (JPEG quality 30–60; resized ×0.5–0.8 or
×1.25–1.5; 2–5 % cropped; brightness ×0.75–0.9 or ×1.1–1.25) and one distinct scene per original,
40 originals per group (the issue's protocol), 10 groups. Pair recall / precision of phash8:

    bits                                 6              8              10             12
    distinct = same sport           0.921 / 0.990  0.966 / 0.985  0.986 / 0.958  0.996 / 0.899
    distinct = same sport, players,
               shirt and ball       0.913 / 0.982  0.958 / 0.964  0.983 / 0.928  0.993 / 0.876

8 is the only threshold with both at or above 95 % for both kinds of non-duplicates. Small crops
are phash's weak point: 2–5 % crops are found at 0.87 (0.84) at 8 bits, 0.94 at 10, since a crop
shifts the 8×8 lowest DCT frequencies; no 64-bit hash measured (dhash8 too) reaches 95 % on crops
alone while keeping precision at 95 %. Precision also falls as sets grow, since each non-duplicate
pair is another chance of a false match (0.03 % of same-sport pairs, 0.07 % of same-attribute
pairs are within 8 bits): with the 10 groups pooled (10× the non-duplicates per true pair) it is
0.88 (0.81). Real photos are more varied than five drawn grounds; look at the example pairs
printed. The best hash measured is a 256-bit phash (``hash_size=16``): 0.980 / 0.999 at 64 bits,
crops 0.92, pooled precision 0.95 — it needs a 64-digit ``images.phash`` and a wider index.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, or_, select

from vicap_jobs.data.hamming_index import near_pairs
from vicap_jobs.data.phash import hamming
from vicap_jobs.db.base import utcnow
from vicap_jobs.db.bulk import insert_rows
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import SPLITS, Image, ImageOverlap
from vicap_jobs.errors import InputError
from vicap_jobs.services.datasets import get_dataset
from vicap_jobs.services.identity import fill_perceptual_hashes

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 8
DEFAULT_EXAMPLES = 3
MAX_THRESHOLD = 16  # at 16 of 64 bits 1 % of unrelated same-sport pairs already match (bench sweep)
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

    An image present in both groups pairs with itself (exact, distance 0).
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
        for left_id, right_id, distance in near_pairs(
            [(k.id, k.phash or "") for k in left_hashed], [(k.id, k.phash or "") for k in right_hashed], threshold
        ):
            a, b = left_by_id[left_id], right_by_id[right_id]
            if a.sha256 and a.sha256 == b.sha256:
                continue  # already an exact pair
            pairs.append(OverlapPair(a.id, b.id, a.file_name, b.file_name, "near", distance))
    return pairs


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
        raise InputError(f"--threshold must be between 0 and {MAX_THRESHOLD} bits, got {threshold}")
