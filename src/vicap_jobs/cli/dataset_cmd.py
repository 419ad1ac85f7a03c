"""``vicap-jobs dataset``: import caption data sets, generate the synthetic one, inspect them."""

from __future__ import annotations

from pathlib import Path

import click

from vicap_jobs.cli import choices
from vicap_jobs.cli.common import console, open_store, print_table
from vicap_jobs.cli.dataset_overlap import overlap
from vicap_jobs.data.formats import FORMATS, REGISTRY
from vicap_jobs.services.datasets import (
    DatasetInfo,
    create_synth_dataset,
    describe_dataset,
    import_file,
    list_datasets,
    profile_dataset,
    set_nightly_splits,
)
from vicap_jobs.storage.redact import redact


@click.group()
def dataset() -> None:
    """Import, generate, list and describe caption data sets.

    Example:

    \b
        vicap-jobs dataset import uitviic --format coco --split test \\
            --annotations uitviic_captions_test2017.json --images coco/val2017
        vicap-jobs dataset import ktvic --annotations ktvic/train_data.json --images ktvic/train-images
        vicap-jobs dataset synth viic-synth --images 1000
        vicap-jobs dataset show uitviic
        vicap-jobs dataset describe uitviic
    """


DATASET_FORMAT = choices.RegistryChoice("data set format", lambda: FORMATS)


@dataset.command("import")
@click.argument("name")
@click.option(
    "--format",
    "fmt",
    type=DATASET_FORMAT,
    default=None,
    help="Default: told from the file's content. "
    + "; ".join(f"{f.name}: {f.summary}" for f in REGISTRY.values())
    + ".",
)
@click.option(
    "--annotations",
    type=str,
    required=True,
    metavar="FILE|URL",
    help="The captions file: a local path or an object storage URL (s3://bucket/captions.json).",
)
@click.option(
    "--images",
    "images_dir",
    type=str,
    metavar="FOLDER|URL",
    help="Folder or object storage prefix (s3://bucket/photos/) the file names are relative to "
    "(default: the captions file's folder).",
)
@click.option(
    "--split",
    type=choices.SPLIT,
    default=None,
    help="Default: the split the file names (uit-openviic-dev.json → val, test_data.json → test) "
    "or, for csv / jsonl with a split column, every split in it.",
)
@click.option("--require-images", is_flag=True, help="Fail when an image file is missing instead of reporting it.")
@click.option("--replace", is_flag=True, help="Replace this split if it was imported before.")
def import_cmd(
    name: str,
    fmt: str | None,
    annotations: str,
    images_dir: str | None,
    split: str | None,
    require_images: bool,
    replace: bool,
) -> None:
    """Import the split(s) of a captions file (all of them or nothing).

    The captions file and the images may be in object storage (`s3://`, `gs://`,
    any fsspec URL; credentials from AWS_* variables, profiles or instance
    roles): image rows then record the object URLs, the prefix is listed once
    for missing images, and each object is read once for its sha256.

    Example:

    \b
        vicap-jobs dataset import uitviic --format coco --split train \\
            --annotations ../shared/data/uitviic/uitviic_captions_train2017.json --images coco/train2017
        vicap-jobs dataset import openviic --annotations uit-openviic-dev.json --images images/
        vicap-jobs dataset import ktvic --annotations ktvic/test_data.json --images ktvic/public-test-images
        vicap-jobs dataset import mine --annotations captions.csv    # file,caption,split columns
        vicap-jobs dataset import kaggle --format captions-txt --split test --annotations test/captions.txt
        vicap-jobs dataset import uitviic --format coco --split test \\
            --annotations s3://team-bucket/uitviic/uitviic_captions_test2017.json --images s3://team-bucket/coco/val2017/
    """

    _, db = open_store()
    with console.status(f"reading {redact(images_dir or annotations)}"):  # a spinner on a terminal only
        reports = import_file(
            db=db,
            name=name,
            annotations=annotations,
            fmt=fmt,
            split=split,
            images_dir=images_dir,
            require_images=require_images,
            replace=replace,
        )
    for report in reports:
        console.print(
            f"imported {report.n_images} images and {report.n_captions} captions into {name!r} ({report.split})"
        )
        if report.n_missing:
            console.print(
                f"[yellow]{report.n_missing} image files are missing[/] (captions kept for text and metrics), e.g.:"
            )
            for path in report.missing_examples:
                console.print(f"  {path}", markup=False)


@dataset.command()
@click.argument("name")
@click.option(
    "--images", "n_images", type=click.IntRange(10), default=1000, show_default=True, help="Images over all splits."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=click.IntRange(32, 1024), default=224, show_default=True, help="Image side in pixels.")
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), help="Default: $VICAP_HOME/datasets/NAME."
)
@click.option("--overwrite", is_flag=True, help="Regenerate and re-import if it exists.")
def synth(name: str, n_images: int, seed: int, size: int, out_dir: Path | None, overwrite: bool) -> None:
    """Generate the synthetic Vietnamese sports caption set and import its train/val/test splits.

    Pillow-drawn scenes (football, tennis, basketball, baseball, volleyball;
    1-3 players in one shirt colour; a ball left/middle/right) with 5 true
    Vietnamese captions each, written in UIT-ViIC's COCO format.

    Example:

    \b
        vicap-jobs dataset synth viic-synth --images 1000 --seed 0 --size 96
    """

    settings, db = open_store()
    target = out_dir or settings.datasets_dir / name
    with console.status(f"drawing {n_images} images into {target}"):
        reports = create_synth_dataset(
            db=db, name=name, n_images=n_images, seed=seed, size=size, out_dir=target, overwrite=overwrite
        )
    print_table(
        f"data set {name}", ["split", "images", "captions"], [[r.split, r.n_images, r.n_captions] for r in reports]
    )


@dataset.command("list")
def list_cmd() -> None:
    """List data sets with their image counts per split.

    Example:

    \b
        vicap-jobs dataset list
    """

    _, db = open_store()
    rows = list_datasets(db=db)
    if not rows:
        console.print("no data sets yet; `vicap-jobs dataset import ...` or `vicap-jobs dataset synth NAME`")
        return
    print_table(
        "data sets",
        ["name", "format", "train", "val", "test", "nightly"],
        [
            [d.name, d.format, *(_count(d, s) for s in ("train", "val", "test")), ",".join(d.nightly_splits) or "-"]
            for d in rows
        ],
    )


def _count(info: DatasetInfo, split: str) -> int | None:
    """Images in ``split`` of the data set, or None when it has no such split."""
    return next((s.n_images for s in info.splits if s.split == split), None)


@dataset.command()
@click.argument("name")
def show(name: str) -> None:
    """Describe a data set: counts per split, captions per image, train vocabulary size.

    Example:

    \b
        vicap-jobs dataset show uitviic
    """

    _, db = open_store()
    info = describe_dataset(db=db, name=name)
    print_table(
        f"data set {info.name} ({info.format})",
        ["split", "images", "captions", "min/img", "max/img", "files missing"],
        [[s.split, s.n_images, s.n_captions, s.min_per_image, s.max_per_image, s.n_missing_files] for s in info.splits],
    )
    console.print(
        f"train vocabulary (syllables): {info.vocabulary_size}; source: {info.source_path}; "
        f"nightly re-evaluation: {', '.join(info.nightly_splits) or 'off'}"
    )


@dataset.command()
@click.argument("name")
@click.option("--top", type=click.IntRange(0, 50), default=5, show_default=True, help="Most frequent captions shown.")
def describe(name: str, top: int) -> None:
    """Profile a data set per split: captions per image, caption lengths, vocabulary, most frequent captions.

    Lengths and vocabulary count syllables of the normalized captions; the most
    frequent captions are the candidates the blind baseline chooses from.

    Example:

    \b
        vicap-jobs dataset describe uitviic --top 5
    """

    _, db = open_store()
    profile = profile_dataset(db=db, name=name, top=top)
    print_table(
        f"data set {profile.name} ({profile.format})",
        ["split", "images", "captions", "per image min/mean/max", "syllables p5/p50/p95/max", "vocabulary", "missing"],
        [
            [
                s.split,
                s.n_images,
                s.n_captions,
                f"{s.min_per_image}/{s.mean_per_image:.2f}/{s.max_per_image}",
                "/".join(str(s.length_percentiles[p]) for p in sorted(s.length_percentiles)) + f"/{s.max_length}",
                s.vocabulary_size,
                s.n_missing_files,
            ]
            for s in profile.splits
        ],
    )
    for s in profile.splits:
        if s.top_captions:
            console.print(f"most frequent {s.split} captions:")
            for text, count in s.top_captions:
                console.print(f"  {count:>6}  {text}")


@dataset.command()
@click.argument("name")
@click.option("--split", "splits", multiple=True, type=choices.SPLIT, help="Repeatable.")
@click.option("--off", is_flag=True, help="Stop re-evaluating this data set.")
def nightly(name: str, splits: tuple[str, ...], off: bool) -> None:
    """Choose which splits the nightly scheduler re-evaluates every model on.

    Example:

    \b
        vicap-jobs dataset nightly uitviic --split test
        vicap-jobs dataset nightly uitviic --off
    """

    if not off and not splits:
        raise click.UsageError("give --split (repeatable) or --off")
    _, db = open_store()
    set_nightly_splits(db=db, name=name, splits=[] if off else list(splits))
    console.print(f"nightly re-evaluation of {name!r}: {', '.join(splits) if not off else 'off'}")


dataset.add_command(overlap)
