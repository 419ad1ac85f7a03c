"""``vicap-jobs scores``: latest scores per model × data set × split beside the blind baseline."""

from __future__ import annotations

import click

from vicap_jobs.cli.common import console, err_console, open_store, print_table
from vicap_jobs.cli.outputs import out_option
from vicap_jobs.errors import InputError
from vicap_jobs.services.outputs import write_output
from vicap_jobs.services.scores import SCORE_FORMATS, baselines, latest_scores, render_scores

SCALE_NOTE = "BLEU and ROUGE-L × 100; CIDEr-D on its own ×10 scale"


def cider_text(value: float | None) -> str | None:
    """CIDEr-D with 2 decimals (not a percentage); None (shown as "-") for evaluations stored before it existed."""
    return None if value is None else f"{value:.2f}"


@click.command()
@click.option("--dataset", help="Only this data set.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", *SCORE_FORMATS]),
    default="table",
    show_default=True,
    help="table: for reading; csv/json: one raw row per model × data set × split (scores 0..1, CIDEr-D ×10).",
)
@out_option("File for --format csv or json")
def scores(dataset: str | None, fmt: str, out: str | None) -> None:
    """Show the newest BLEU-1..4 / ROUGE-L / CIDEr-D of every model beside the blind baseline.

    BLEU and ROUGE-L are shown × 100; CIDEr-D as pycocoevalcap reports it (×10
    scale, usually 0..2), "-" for evaluations stored before it was computed.

    A model that does not beat the blind baseline (one constant caption chosen
    on the train split) is not reading the image.

    Example:

    \b
        vicap-jobs scores
        vicap-jobs scores --dataset uitviic
        vicap-jobs scores --format csv --out s3://team-bucket/reports/scores.csv
    """

    if out is not None and fmt == "table":
        raise InputError("--out writes --format csv or json; add one of them")
    _, db = open_store()
    rows = latest_scores(db=db, dataset=dataset)
    if fmt != "table":
        text = render_scores(rows, fmt)
        if out is None:
            click.echo(text, nl=False)
        else:
            shown = write_output(out, text)
            err_console.print(f"{len(rows)} score row(s) written to {shown}", markup=False)
        return
    if not rows:
        console.print("no evaluations yet; run `vicap-jobs evaluate --model NAME --dataset NAME --split test`")
    else:
        print_table(
            f"latest scores ({SCALE_NOTE})",
            [
                "model",
                "data set",
                "split",
                "tok.",
                "BLEU-1",
                "BLEU-2",
                "BLEU-3",
                "BLEU-4",
                "ROUGE-L",
                "CIDEr-D",
                "images",
                "baseline B4",
                "baseline R-L",
                "baseline C-D",
                "beats",
            ],
            [
                [
                    r.model or "(predictions file)",
                    r.dataset,
                    r.split,
                    r.tokenization,
                    *(100 * v for v in (r.bleu_1, r.bleu_2, r.bleu_3, r.bleu_4, r.rouge_l)),
                    cider_text(r.cider_d),
                    r.n_images,
                    None if r.baseline_bleu_4 is None else 100 * r.baseline_bleu_4,
                    None if r.baseline_rouge_l is None else 100 * r.baseline_rouge_l,
                    cider_text(r.baseline_cider_d),
                    {True: "yes", False: "NO", None: "-"}[r.beats_baseline],
                ]
                for r in rows
            ],
        )
    base = [b for b in baselines(db=db) if dataset is None or b[0] == dataset]
    if base:
        print_table(
            f"blind baselines ({SCALE_NOTE})",
            ["data set", "split", "tok.", "BLEU-4", "ROUGE-L", "CIDEr-D", "images"],
            [[d, s, t, 100 * b4, 100 * rl, cider_text(cd), n] for d, s, t, b4, rl, cd, n in base],
        )
