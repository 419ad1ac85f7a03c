"""Data sets in the store: import a split in one transaction, list, describe, load samples.

The captions file and the images folder may be local or object storage URLs (``s3://bucket/…``,
any fsspec URL). An image row's ``path`` is then the object's URL, and its ``sha256`` is computed
from the object's bytes as it is for a local file, because the rest of the project reads
"sha256 IS NULL" as "file missing" (evaluation, training, overlap checks): importing a prefix reads
every object once, ``VICAP_STORAGE_CONCURRENCY`` at a time (the local import reads every file once
too). The prefix is listed once; a file name the listing does not hold is missing, with the same
rules as a missing local file. ``width``/``height`` of an object come from the captions file when
it gives them (COCO does), else stay NULL: no header is probed.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, case, delete, func, select
from sqlalchemy.orm import Session

from vicap_jobs.data.formats import ParsedFile, ParsedImage, ParsedSplit, read_file
from vicap_jobs.data.images import image_size, sha256_file
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.data.synth import generate_synth
from vicap_jobs.data.text import SegmentedCaption, normalize, tokenize
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import SPLITS, Caption, Dataset, Evaluation, Image, ReferenceCaption
from vicap_jobs.errors import InputError, NotFoundError
from vicap_jobs.settings import get_settings
from vicap_jobs.storage.locations import as_location, is_url, join
from vicap_jobs.storage.objects import ObjectError, list_image_objects, read_object
from vicap_jobs.storage.redact import has_inline_secret, redact

MISSING_SHOWN = 5


@dataclass(frozen=True)
class ImportReport:
    dataset: str
    split: str
    n_images: int
    n_captions: int
    n_missing: int
    missing_examples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SplitStats:
    split: str
    n_images: int
    n_captions: int
    min_per_image: int
    max_per_image: int
    n_missing_files: int


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    format: str
    source_path: str | None
    nightly_splits: list[str]
    splits: list[SplitStats]
    vocabulary_size: int | None


def import_split(
    *,
    db: Engine,
    name: str,
    fmt: str,
    annotations: str | Path,
    images_dir: str | Path | None,
    split: str,
    require_images: bool = False,
    replace: bool = False,
) -> ImportReport:
    """Import one split of a data set; all of it is written or none of it.

    Images missing on disk are imported anyway (so captions can still be used
    for text and metrics) and reported; ``require_images`` makes that an error.
    """
    if split not in SPLITS:
        raise InputError(f"--split must be one of {', '.join(SPLITS)}")
    (report,) = import_file(
        db=db,
        name=name,
        annotations=annotations,
        fmt=fmt,
        split=split,
        images_dir=images_dir,
        require_images=require_images,
        replace=replace,
    )
    return report


def import_file(
    *,
    db: Engine,
    name: str,
    annotations: str | Path,
    fmt: str | None = None,
    split: str | None = None,
    images_dir: str | Path | None = None,
    require_images: bool = False,
    replace: bool = False,
) -> list[ImportReport]:
    """Import every split a captions file holds, in one transaction: all of them or none.

    ``fmt`` None: the format is told from the content. ``split`` forces the split
    of a file that holds one (over what its name implies); for a file with a
    split column it picks that split's rows. Without it, a file whose name or
    records do not say its split is refused. ``annotations`` and ``images_dir`` may be object
    storage URLs (see the module docstring); a URL carrying credentials is refused, as it would be
    stored with every image.
    """
    if split is not None and split not in SPLITS:
        raise InputError(f"--split must be one of {', '.join(SPLITS)}")
    for location in (annotations, images_dir):
        if location is not None and has_inline_secret(location):
            raise InputError(
                f"{redact(location)}: give object storage credentials through AWS_* variables or a profile, "
                "not in the URL (the URL is stored with every image)"
            )
    parsed = read_file(annotations if is_url(annotations) else Path(annotations), fmt)
    parts = _choose_splits(parsed, split)
    base = _images_base(annotations, images_dir)
    located = {
        part_split: [(image, _image_location(base, image.file_name)) for image in part.images]
        for part_split, part in parts.items()
    }
    facts = _file_facts(base, [location for rows in located.values() for _, location in rows])
    missing = {part_split: [loc for _, loc in rows if facts[loc] is None] for part_split, rows in located.items()}
    n_missing, n_images = sum(map(len, missing.values())), sum(map(len, located.values()))
    if n_missing and require_images:
        examples = [path for paths in missing.values() for path in paths][:MISSING_SHOWN]
        raise InputError(f"{n_missing} of {n_images} images are missing under {base}, e.g. {', '.join(examples)}")
    with session_scope(db) as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == name))
        if dataset is None:
            dataset = Dataset(name=name, format=parsed.format, source_path=base)
            session.add(dataset)
            session.flush()
        for part_split, part in parts.items():
            _add_split(session, dataset, part, located[part_split], facts, split=part_split, replace=replace)
    return [
        ImportReport(
            name,
            part_split,
            len(located[part_split]),
            part.n_captions,
            len(missing[part_split]),
            missing[part_split][:MISSING_SHOWN],
        )
        for part_split, part in parts.items()
    ]


@dataclass(frozen=True)
class FileFacts:
    """What the import records of an image file or object that is there."""

    sha256: str
    width: int | None = None
    height: int | None = None


def _images_base(annotations: str | Path, images_dir: str | Path | None) -> str:
    """The folder or prefix file names are relative to: ``images_dir``, else the captions file's folder."""
    if images_dir is not None:
        return as_location(images_dir) if is_url(images_dir) else str(Path(images_dir))
    if is_url(annotations):
        return str(annotations).rsplit("/", 1)[0]
    return str(Path(annotations).parent)


def _image_location(base: str, file_name: str) -> str:
    """An image's location as the store records it: the object URL, or the absolute local path."""
    return join(base, file_name) if is_url(base) else str((Path(base) / file_name).resolve())


def _file_facts(base: str, locations: Iterable[str]) -> dict[str, FileFacts | None]:
    """location → its facts (sha256, size), None for a missing or unreadable file or object."""
    wanted = list(dict.fromkeys(locations))
    if not is_url(base):
        return {location: _local_facts(Path(location)) for location in wanted}
    try:
        listed = set(list_image_objects(base, recursive=True, is_image_name=lambda _name: True))
    except InputError as exc:
        if not str(exc).startswith("nothing found"):
            raise
        listed = set()
    present = [location for location in wanted if location in listed]
    with ThreadPoolExecutor(max_workers=get_settings().storage_concurrency) as pool:
        digests = dict(zip(present, pool.map(_object_sha256, present), strict=True))
    return {location: FileFacts(digest) if (digest := digests.get(location)) else None for location in wanted}


def _local_facts(path: Path) -> FileFacts | None:
    if not path.is_file():
        return None
    size = image_size(path)
    return FileFacts(sha256_file(path), *(size or (None, None)))


def _object_sha256(url: str) -> str | None:
    """The object's sha256, None when it cannot be read (counted as missing, like an unreadable file)."""
    try:
        return hashlib.sha256(read_object(url)).hexdigest()
    except ObjectError:
        return None


def _choose_splits(parsed: ParsedFile, split: str | None) -> dict[str, ParsedSplit]:
    """split name → its part of the file, after ``--split`` forced or picked one."""
    source = parsed.source
    if parsed.split_column:
        parts = {part.split: part for part in parsed.splits if part.split is not None}
        if split is None:
            return dict(sorted(parts.items(), key=lambda item: SPLITS.index(item[0])))
        if split not in parts:
            raise InputError(f"{source} has no {split} rows (its split column holds {', '.join(parts)})")
        return {split: parts[split]}
    (part,) = parsed.splits
    chosen = split or part.split
    if chosen is None:
        raise InputError(
            f"{source} ({parsed.format}) does not say which split it holds: give --split ({', '.join(SPLITS)})"
        )
    return {chosen: part}


def _add_split(
    session: Session,
    dataset: Dataset,
    parsed: ParsedSplit,
    located: list[tuple[ParsedImage, str]],
    facts: dict[str, FileFacts | None],
    *,
    split: str,
    replace: bool,
) -> None:
    """Add one split's images and references to the session (the caller's transaction)."""
    name = dataset.name
    existing = session.scalar(
        select(func.count()).select_from(Image).where(Image.dataset_id == dataset.id, Image.split == split)
    )
    if existing and not replace:
        raise InputError(
            f"data set {name!r} already has a {split} split ({existing} images); pass --replace to re-import it"
        )
    if existing:
        _refuse_if_used(session, dataset.id, split, name)
        session.execute(delete(Image).where(Image.dataset_id == dataset.id, Image.split == split))
    taken = set(session.scalars(select(Image.path).where(Image.dataset_id == dataset.id)))
    for image, path in located:
        if path in taken:
            raise InputError(f"{redact(parsed.source)}: {image.file_name} is already in another split of {name!r}")
        fact = facts[path]
        row = Image(
            dataset_id=dataset.id,
            path=path,
            file_name=image.file_name,
            coco_id=image.coco_id,
            sha256=fact.sha256 if fact else None,
            width=fact.width if fact and fact.width else image.width,
            height=fact.height if fact and fact.height else image.height,
            split=split,
        )
        row.references = [
            ReferenceCaption(
                position=i,
                text=text,
                normalized=normalize(text),
                segmented=image.segmented_at(i),
                coco_annotation_id=ann_id,
            )
            for i, (text, ann_id) in enumerate(image.captions)
        ]
        session.add(row)
        taken.add(path)
    session.flush()


def _refuse_if_used(session: Session, dataset_id: int, split: str, name: str) -> None:
    """Replacing a split deletes its images; refuse while captions or scores point at them."""

    in_split = select(Image.id).where(Image.dataset_id == dataset_id, Image.split == split)
    n_captions = session.scalar(select(func.count()).select_from(Caption).where(Caption.image_id.in_(in_split)))
    n_scores = session.scalar(
        select(func.count())
        .select_from(Evaluation)
        .where(Evaluation.dataset_id == dataset_id, Evaluation.split == split)
    )
    if n_captions or n_scores:
        raise InputError(
            f"the {split} split of {name!r} has {n_captions} generated captions and {n_scores} evaluations; "
            f"replacing it would delete them. Import it as a new data set name instead"
        )


def get_dataset(*, db: Engine, name: str) -> Dataset:
    with session_scope(db) as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == name))
        if dataset is None:
            known = list(session.scalars(select(Dataset.name).order_by(Dataset.name)))
            hint = (
                f"; known: {', '.join(known)}"
                if known
                else "; none imported yet (`vicap-jobs dataset import` or `dataset synth`)"
            )
            raise NotFoundError(f"no data set named {name!r}{hint}")
        session.expunge(dataset)
        return dataset


def list_datasets(*, db: Engine) -> list[DatasetInfo]:
    with session_scope(db) as session:
        names = list(session.scalars(select(Dataset.name).order_by(Dataset.name)))
    return [describe_dataset(db=db, name=n, with_vocabulary=False) for n in names]


def describe_dataset(*, db: Engine, name: str, with_vocabulary: bool = True) -> DatasetInfo:
    """Counts per split, captions per image and (syllable) vocabulary size of the train split."""

    dataset = get_dataset(db=db, name=name)
    stats: list[SplitStats] = []
    vocabulary: set[str] = set()
    with session_scope(db) as session:
        for split in SPLITS:
            per_image = Counter(
                dict(
                    session.execute(
                        select(Image.id, func.count(ReferenceCaption.id))
                        .outerjoin(ReferenceCaption, ReferenceCaption.image_id == Image.id)
                        .where(Image.dataset_id == dataset.id, Image.split == split)
                        .group_by(Image.id)
                    ).all()
                )
            )
            if not per_image:
                continue
            missing = session.scalar(
                select(func.count())
                .select_from(Image)
                .where(Image.dataset_id == dataset.id, Image.split == split, Image.sha256.is_(None))
            )
            counts = list(per_image.values())
            stats.append(SplitStats(split, len(counts), sum(counts), min(counts), max(counts), missing or 0))
        if with_vocabulary:
            for text in session.scalars(
                select(ReferenceCaption.normalized)
                .join(Image)
                .where(Image.dataset_id == dataset.id, Image.split == "train")
            ):
                vocabulary.update(tokenize(text, "syllable"))
    return DatasetInfo(
        dataset.id,
        dataset.name,
        dataset.format,
        dataset.source_path,
        list(dataset.nightly_splits or []),
        stats,
        len(vocabulary) if with_vocabulary else None,
    )


@dataclass(frozen=True)
class SplitProfile:
    """What a split's references look like (``dataset describe``); lengths in syllables."""

    split: str
    n_images: int
    n_captions: int
    min_per_image: int
    mean_per_image: float
    max_per_image: int
    length_percentiles: dict[int, int]  # percentile (5, 50, 95) -> caption length in syllables
    max_length: int
    vocabulary_size: int  # distinct syllables of this split's normalized references
    top_captions: list[tuple[str, int]]  # the most frequent normalized captions: the blind baseline's candidates
    n_missing_files: int


@dataclass(frozen=True)
class DatasetProfile:
    """A data set's splits in train, val, test order."""

    name: str
    format: str
    source_path: str | None
    splits: list[SplitProfile]


PERCENTILES = (5, 50, 95)
TOP_CAPTIONS = 5


def profile_dataset(*, db: Engine, name: str, top: int = TOP_CAPTIONS) -> DatasetProfile:
    """Per split: images, captions per image, caption lengths, vocabulary, most frequent captions.

    Counts, means and the length histogram are SQL aggregates (a normalized
    caption is single-spaced, so its syllables are its spaces plus one); only
    the vocabulary reads the normalized texts back.
    """
    dataset = get_dataset(db=db, name=name)
    in_dataset = Image.dataset_id == dataset.id
    syllables = case(
        (ReferenceCaption.normalized == "", 0),
        else_=func.length(ReferenceCaption.normalized)
        - func.length(func.replace(ReferenceCaption.normalized, " ", ""))
        + 1,
    )
    with session_scope(db) as session:
        per_image = (
            select(Image.split.label("split"), func.count(ReferenceCaption.id).label("n"))
            .outerjoin(ReferenceCaption, ReferenceCaption.image_id == Image.id)
            .where(in_dataset)
            .group_by(Image.split, Image.id)
            .subquery()
        )
        counts = {
            split: (n_images, int(total or 0), low, float(mean or 0.0), high)
            for split, n_images, total, low, mean, high in session.execute(
                select(
                    per_image.c.split,
                    func.count(),
                    func.sum(per_image.c.n),
                    func.min(per_image.c.n),
                    func.avg(per_image.c.n),
                    func.max(per_image.c.n),
                ).group_by(per_image.c.split)
            )
        }
        missing = dict(
            session.execute(
                select(Image.split, func.count()).where(in_dataset, Image.sha256.is_(None)).group_by(Image.split)
            ).all()
        )
        histograms: dict[str, dict[int, int]] = {}
        for split, length, n in session.execute(
            select(Image.split, syllables, func.count()).join(Image).where(in_dataset).group_by(Image.split, syllables)
        ):
            histograms.setdefault(split, {})[int(length)] = n
        vocabularies: dict[str, set[str]] = {}
        for split, text in session.execute(
            select(Image.split, ReferenceCaption.normalized).join(Image).where(in_dataset)
        ):
            vocabularies.setdefault(str(split), set()).update(text.split())
        frequent = {
            split: [
                (text, n)
                for text, n in session.execute(
                    select(ReferenceCaption.normalized, func.count().label("n"))
                    .join(Image)
                    .where(in_dataset, Image.split == split)
                    .group_by(ReferenceCaption.normalized)
                    .order_by(func.count().desc(), ReferenceCaption.normalized)
                    .limit(top)
                )
            ]
            for split in counts
        }
    profiles = []
    for split in (s for s in SPLITS if s in counts):
        n_images, n_captions, low, mean, high = counts[split]
        histogram = histograms.get(split, {})
        profiles.append(
            SplitProfile(
                split=split,
                n_images=n_images,
                n_captions=n_captions,
                min_per_image=low,
                mean_per_image=mean,
                max_per_image=high,
                length_percentiles={p: _percentile(histogram, p) for p in PERCENTILES},
                max_length=max(histogram, default=0),
                vocabulary_size=len(vocabularies.get(split, ())),
                top_captions=frequent[split],
                n_missing_files=missing.get(split, 0),
            )
        )
    return DatasetProfile(dataset.name, dataset.format, dataset.source_path, profiles)


def _percentile(histogram: dict[int, int], percent: int) -> int:
    """Nearest-rank percentile of a {value: count} histogram (0 when it is empty)."""
    total = sum(histogram.values())
    if not total:
        return 0
    rank = max(1, math.ceil(percent / 100 * total))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)


def set_nightly_splits(*, db: Engine, name: str, splits: list[str]) -> None:
    """Mark which splits the nightly scheduler re-evaluates (empty = none)."""
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise InputError(f"unknown split {bad[0]!r}; choose from {', '.join(SPLITS)}")
    with session_scope(db) as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == name))
        if dataset is None:
            raise NotFoundError(f"no data set named {name!r}")
        dataset.nightly_splits = sorted(set(splits)) or None


def load_samples(*, db: Engine, dataset: str, split: str, require_files: bool = True) -> list[CaptionSample]:
    """Images of a split with their reference captions, as plain records for trainers and evaluators.

    ``image_path`` is a ``Path`` for a local file and the URL as a ``str`` for an object (``load_rgb``
    reads both).
    """
    ds = get_dataset(db=db, name=dataset)
    with session_scope(db) as session:
        query = select(Image).where(Image.dataset_id == ds.id, Image.split == split).order_by(Image.id)
        if require_files:
            query = query.where(Image.sha256.is_not(None))
        samples = [
            CaptionSample(
                image_id=row.id,
                image_path=row.path if is_url(row.path) else Path(row.path),
                captions=tuple(_reference(ref.text, ref.segmented) for ref in row.references),
            )
            for row in session.scalars(query)
        ]
    return samples


def split_references(*, db: Engine, dataset_id: int, split: str) -> dict[int, list[str]]:
    """image id → reference captions (as given) for one split.

    A reference the data set segmented itself (KTVIC) is a `SegmentedCaption`, so
    ``word`` tokenization takes its words from that segmentation, never from pyvi.
    """
    with session_scope(db) as session:
        rows = session.execute(
            select(ReferenceCaption.image_id, ReferenceCaption.text, ReferenceCaption.segmented)
            .join(Image)
            .where(Image.dataset_id == dataset_id, Image.split == split)
            .order_by(ReferenceCaption.image_id, ReferenceCaption.position)
        ).all()
    references: dict[int, list[str]] = {}
    for image_id, text, segmented in rows:
        references.setdefault(image_id, []).append(_reference(text, segmented))
    return references


def _reference(text: str, segmented: str | None) -> str:
    """The caption as given; carrying its segmented form when the data set has one."""
    return SegmentedCaption(text, segmented) if segmented else text


def create_synth_dataset(
    *,
    db: Engine,
    name: str,
    n_images: int,
    seed: int,
    size: int,
    out_dir: Path,
    overwrite: bool = False,
    nightly: bool = True,
) -> list[ImportReport]:
    """Generate the synthetic sports set and import its three splits through the COCO importer."""

    if n_images < 10:
        raise InputError("--images must be at least 10 so every split gets images")
    synth = generate_synth(Path(out_dir), n_images=n_images, seed=seed, size=size, overwrite=overwrite)
    reports = [
        import_split(
            db=db,
            name=name,
            fmt="coco",
            annotations=synth.annotations[split],
            images_dir=synth.image_dirs[split],
            split=split,
            require_images=True,
            replace=overwrite,
        )
        for split in SPLITS
        if split in synth.annotations
    ]
    if nightly:
        set_nightly_splits(db=db, name=name, splits=["test"])
    return reports
