"""Training options shared by ``vicap-jobs train`` and ``vicap-jobs submit train``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vicap_jobs.cli import choices


def train_arguments(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add NAME and every training option to a click command."""
    decorators = [
        click.argument("name"),
        click.option("--family", type=choices.FAMILY, required=True, help="Model family from the registry."),
        click.option("--backbone", type=choices.BACKBONE, default="tiny", show_default=True),
        click.option("--dataset", required=True, help="Data set name (train split trains, val split early-stops)."),
        click.option(
            "--image-size",
            type=click.IntRange(32, 1024),
            help="Input side in pixels (default 96 for tiny, 224 otherwise).",
        ),
        click.option("--epochs", type=click.IntRange(1), help="Maximum epochs (early stopping may end sooner)."),
        click.option(
            "--lr",
            type=click.FloatRange(min=0, min_open=True),
            help="AdamW peak learning rate (default 2e-3; the seed study tried 1e-3, 5e-4, 1e-4).",
        ),
        click.option("--batch-size", type=click.IntRange(1), help="Captions per optimizer step (default 32)."),
        click.option("--label-smoothing", type=click.FloatRange(0, 0.5), help="Cross-entropy label smoothing."),
        click.option("--patience", type=click.IntRange(1), help="Epochs without improvement before stopping."),
        click.option("--early-stop-on", type=choices.EARLY_STOP_ON, help="Early-stopping metric."),
        click.option("--tokenization", type=choices.TOKENIZATION, help="syllable (default) or pyvi words."),
        click.option("--min-freq", type=click.IntRange(1), help="Vocabulary minimum count on the train split."),
        click.option("--seed", type=int, help="Random seed (training is deterministic on CPU)."),
        click.option(
            "--pretrained",
            "weights",
            flag_value="pretrained",
            help="torchvision's pretrained backbone weights (cached locally).",
        ),
        click.option(
            "--random-init", "weights", flag_value="random", help="Random backbone weights (tests, the synthetic demo)."
        ),
        click.option(
            "--backbone-weights",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="A local torchvision state dict (.pth or .safetensors) for the backbone.",
        ),
        click.option(
            "--finetune-backbone/--frozen-backbone",
            default=None,
            help="Default: frozen (features cached once) with pretrained weights; fine-tuned with --random-init.",
        ),
        click.option("--device", default=None, help="cpu, cuda, cuda:N (default cpu)."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def options_from_cli(values: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    """(name, family, dataset, TrainOptions values) from the parsed click parameters."""
    name, family, dataset = values.pop("name"), values.pop("family"), values.pop("dataset")
    backbone = values["backbone"]
    local, flag = values.pop("backbone_weights", None), values.pop("weights", None)
    if local is not None and flag is not None:
        other = "--pretrained" if flag == "pretrained" else "--random-init"
        raise click.UsageError(f"--backbone-weights conflicts with {other}; give one of them")
    weights: str | Path = local or flag or ("random" if backbone == "tiny" else "pretrained")
    if backbone == "tiny" and weights == "pretrained":
        raise click.UsageError(
            "the tiny backbone has no pretrained weights; drop --pretrained (tiny trains from random init)"
        )
    finetune = values.pop("finetune_backbone")
    if finetune is None:
        finetune = weights == "random"
    options = {k: v for k, v in values.items() if v is not None}
    options["backbone_weights"] = str(weights) if isinstance(weights, Path) else weights
    options["finetune_backbone"] = finetune
    options.setdefault("image_size", 96 if backbone == "tiny" else 224)
    return name, family, dataset, options
