"""``vicap-jobs export``: ship a model for fast bulk inference."""

from __future__ import annotations

import click

from vicap_jobs.cli import choices
from vicap_jobs.cli.common import console, open_store
from vicap_jobs.services.exporting import export_model


@click.group()
def export() -> None:
    """Export registered models (ONNX for the CNN+LSTM families).

    Example:

    \b
        vicap-jobs export onnx synth-attn
    """


@export.command()
@click.argument("model")
@click.option("--quantize", type=choices.QUANTIZATION, help="Static (QDQ) int8, calibrated on training images.")
def onnx(model: str, quantize: str | None) -> None:
    """Write encoder_model.onnx + decoder_model.onnx, verify them against torch, record them on the model.

    Verification runs torch and onnxruntime on the same images: logits within
    1e-4 and identical greedy captions, or the export fails.

    Example:

    \b
        vicap-jobs export onnx synth-attn
        vicap-jobs export onnx synth-attn --quantize int8
    """

    _, db = open_store()
    with console.status(f"exporting {model} to ONNX and verifying"):
        summary = export_model(db=db, model=model, quantize=quantize)
    console.print(summary)
