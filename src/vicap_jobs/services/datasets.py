"""Data sets in the store: import a split in one transaction, list, describe, load samples."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from vicap_jobs.data.formats import ParsedImage, ParsedSplit, read_split
from vicap_jobs.data.images import image_size, sha256_file
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.data.synth import generate_synth
from vicap_jobs.data.text import normalize, tokenize
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import SPLITS, Caption, Dataset, Evaluation, Image, ReferenceCaption
from vicap_jobs.errors import InputError, NotFoundError

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
    annotations: Path,
    images_dir: Path | None,
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
    parsed = read_split(Path(annotations), fmt)
    base = Path(images_dir) if images_dir is not None else Path(annotations).parent
    located = [(image, (base / image.file_name).resolve()) for image in parsed.images]
    missing = [str(path) for _, path in located if not path.is_file()]
    if missing and require_images:
        raise InputError(
            f"{len(missing)} of {len(located)} images are missing under {base}, e.g. {', '.join(missing[:MISSING_SHOWN])}"
        )
    _write_split(db=db, name=name, fmt=fmt, parsed=parsed, located=located, split=split, replace=replace, source=base)
    return ImportReport(name, split, len(located), parsed.n_captions, len(missing), missing[:MISSING_SHOWN])


def _write_split(
    *,
    db: Engine,
    name: str,
    fmt: str,
    parsed: ParsedSplit,
    located: list[tuple[ParsedImage, Path]],
    split: str,
    replace: bool,
    source: Path,
) -> None:

    with session_scope(db) as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == name))
        if dataset is None:
            dataset = Dataset(name=name, format=fmt, source_path=str(source))
            session.add(dataset)
            session.flush()
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
            if str(path) in taken:
                raise InputError(f"{parsed.source}: {image.file_name} is already in another split of {name!r}")
            present = path.is_file()
            size = image_size(path) if present else None
            row = Image(
                dataset_id=dataset.id,
                path=str(path),
                file_name=image.file_name,
                coco_id=image.coco_id,
                sha256=sha256_file(path) if present else None,
                width=size[0] if size else image.width,
                height=size[1] if size else image.height,
                split=split,
            )
            row.references = [
                ReferenceCaption(position=i, text=text, normalized=normalize(text), coco_annotation_id=ann_id)
                for i, (text, ann_id) in enumerate(image.captions)
            ]
            session.add(row)
            taken.add(str(path))


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
    """Images of a split with their reference captions, as plain records for trainers and evaluators."""
    ds = get_dataset(db=db, name=dataset)
    with session_scope(db) as session:
        query = select(Image).where(Image.dataset_id == ds.id, Image.split == split).order_by(Image.id)
        if require_files:
            query = query.where(Image.sha256.is_not(None))
        samples = [
            CaptionSample(
                image_id=row.id, image_path=Path(row.path), captions=tuple(ref.text for ref in row.references)
            )
            for row in session.scalars(query)
        ]
    return samples


def split_references(*, db: Engine, dataset_id: int, split: str) -> dict[int, list[str]]:
    """image id → reference captions (as given) for one split."""
    with session_scope(db) as session:
        rows = session.execute(
            select(ReferenceCaption.image_id, ReferenceCaption.text)
            .join(Image)
            .where(Image.dataset_id == dataset_id, Image.split == split)
            .order_by(ReferenceCaption.image_id, ReferenceCaption.position)
        ).all()
    references: dict[int, list[str]] = {}
    for image_id, text in rows:
        references.setdefault(image_id, []).append(text)
    return references


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
