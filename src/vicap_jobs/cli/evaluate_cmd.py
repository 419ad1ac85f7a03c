"""``vicap-jobs evaluate``: score a model or a predictions file on a data set split."""

from __future__ import annotations

from pathlib import Path

import click

from vicap_jobs.cli import choices
from vicap_jobs.cli.common import console, open_store, print_table
from vicap_jobs.cli.scores_cmd import SCALE_NOTE, cider_text
from vicap_jobs.metrics.scores import CaptionScores
from vicap_jobs.services.evaluation import evaluate_model, evaluate_predictions


@click.command()
@click.option("--model", help="A registered model: caption the split with it, then score.")
@click.option(
    "--predictions",
    type=click.Path(path_type=Path, dir_okay=False),
    help='A COCO results JSON ([{"image_id", "caption"}]) or CSV (image_id or file_name, caption).',
)
@click.option("--dataset", required=True)
@click.option("--split", type=choices.SPLIT, default="test", show_default=True)
@click.option(
    "--tokenization",
    type=choices.TOKENIZATION,
    default="syllable",
    show_default=True,
    help="How captions are split into tokens for BLEU/ROUGE-L/CIDEr-D (stored with the scores).",
)
@click.option("--engine", "engine_name", help="Inference engine for --model (default: the family's, e.g. onnx).")
@click.option(
    "--allow-missing", is_flag=True, help="With --predictions: score only the predicted images, not the whole split."
)
def evaluate(
    model: str | None,
    predictions: Path | None,
    dataset: str,
    split: str,
    tokenization: str,
    engine_name: str | None,
    allow_missing: bool,
) -> None:
    """Corpus BLEU-1..4, ROUGE-L and CIDEr-D (COCO definitions) beside the blind baseline; stored in `evaluations`.

    Example:

    \b
        vicap-jobs evaluate --model synth-attn --dataset viic-synth --split test
        vicap-jobs evaluate --predictions results.json --dataset uitviic --split test
    """

    if (model is None) == (predictions is None):
        raise click.UsageError("give exactly one of --model or --predictions")
    _, db = open_store()
    if model is not None:
        with console.status(f"captioning {dataset} {split} with {model}"):
            result = evaluate_model(
                db=db, model=model, dataset=dataset, split=split, tokenization=tokenization, engine_name=engine_name
            )
        label = model
    else:
        assert predictions is not None  # exactly one of the two, checked above
        result = evaluate_predictions(
            db=db,
            path=predictions,
            dataset=dataset,
            split=split,
            tokenization=tokenization,
            allow_missing=allow_missing,
        )
        label = str(predictions)
    rows = [_row(label, result.scores)]
    if result.baseline is not None:
        rows.append(_row("blind baseline", result.baseline))
    print_table(
        f"{dataset} {split} ({tokenization} tokens; {SCALE_NOTE})",
        ["", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D", "images"],
        rows,
    )
    if result.baseline_caption:
        console.print(f"blind baseline caption (chosen on train): “{result.baseline_caption}”")
    if result.overlap_warning:
        console.print(result.overlap_warning, style="yellow", markup=False)


def _row(label: str, scores: CaptionScores) -> list[object]:
    """One table row: BLEU-1..4 and ROUGE-L × 100, CIDEr-D with 2 decimals, the image count."""
    percent = [100 * v for v in (scores.bleu_1, scores.bleu_2, scores.bleu_3, scores.bleu_4, scores.rouge_l)]
    return [label, *percent, cider_text(scores.cider_d), scores.n_images]
