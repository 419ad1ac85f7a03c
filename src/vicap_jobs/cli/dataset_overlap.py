"""``vicap-jobs dataset overlap``: the same photos in two splits, or in two data sets (train/test leaks)."""

from __future__ import annotations

import click

from vicap_jobs.cli.common import console, open_store, print_table
from vicap_jobs.errors import VicapError
from vicap_jobs.services.overlap import DEFAULT_EXAMPLES, DEFAULT_THRESHOLD, MAX_THRESHOLD, OverlapReport, find_overlaps


@click.command()
@click.argument("dataset_a", metavar="A")
@click.argument("dataset_b", metavar="[B]", required=False)
@click.option(
    "--threshold",
    type=click.IntRange(0, MAX_THRESHOLD),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Near duplicates: 256-bit perceptual hashes differing in at most this many bits.",
)
@click.option(
    "--examples",
    type=click.IntRange(0),
    default=DEFAULT_EXAMPLES,
    show_default=True,
    help="Example pairs per split pair.",
)
def overlap(dataset_a: str, dataset_b: str | None, threshold: int, examples: int) -> None:
    """Exact (same bytes) and near-duplicate images between the splits of A, or between every split of A and of B.

    Perceptual hashes missing in the store are computed first (once per file content). Every pair
    found is stored in the image_overlaps table; a photo twice within one split is not counted.

    Example:

    \b
        vicap-jobs dataset overlap uitviic
        vicap-jobs dataset overlap uit-openviic ktvic --threshold 56 --examples 5
    """

    _, db = open_store()
    try:
        report = find_overlaps(db=db, dataset_a=dataset_a, dataset_b=dataset_b, threshold=threshold, examples=examples)
    except VicapError as exc:
        raise click.ClickException(str(exc)) from None
    _print_report(report)


def _print_report(report: OverlapReport) -> None:
    if not report.split_pairs:
        why = (
            f"{report.dataset_a} or {report.dataset_b} has no images"
            if report.dataset_b
            else f"{report.dataset_a} has fewer than two splits with images"
        )
        console.print(f"nothing to compare: {why}")
        return
    what = f"{report.dataset_a} and {report.dataset_b}" if report.dataset_b else f"the splits of {report.dataset_a}"
    print_table(
        f"the same photos across {what} (near: perceptual hashes within {report.threshold} bits)",
        ["first", "second", "first's images", "second's images", "exact pairs", "near pairs", "second's with a copy"],
        [
            [p.left, p.right, p.n_left, p.n_right, p.exact, p.near, _share(p.right_overlapping, p.n_right)]
            for p in report.split_pairs
        ],
    )
    shown = [(p, e) for p in report.split_pairs for e in p.examples]
    if shown:
        console.print("examples:")
        for pair, example in shown:
            how = "same file content" if example.kind == "exact" else f"{example.distance} bits apart"
            console.print(
                f"  {pair.left}: {example.left_file}  ~  {pair.right}: {example.right_file}  ({how})", markup=False
            )
    if report.n_without_phash:
        console.print(
            f"{report.n_without_phash} of {report.n_images} images have no perceptual hash (file missing or "
            "unreadable): they were checked for exact copies only, or not at all when the file was missing"
        )
    ids = ", ".join(str(i) for i in report.dataset_ids)
    console.print(
        f"{report.n_stored} new pair(s) stored in the image_overlaps table (smaller image id first), e.g.:\n"
        "  SELECT a.split, a.file_name, b.split, b.file_name, o.kind, o.distance\n"
        "  FROM image_overlaps o JOIN images a ON a.id = o.image_a_id JOIN images b ON b.id = o.image_b_id\n"
        f"  WHERE a.dataset_id IN ({ids}) AND b.dataset_id IN ({ids}) ORDER BY o.distance;",
        markup=False,
    )


def _share(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.0f}%)" if total else "0"
