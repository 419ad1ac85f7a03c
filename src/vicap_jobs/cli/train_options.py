"""Training options shared by ``vicap-jobs train`` and ``vicap-jobs submit train``.

Two kinds of family take different inputs: the CNN+LSTM families a torchvision
backbone (``--backbone``, ``--pretrained`` / ``--random-init`` / ``--backbone-weights``,
``--image-size``), the vision-language families local Hugging Face folders
(``--vision-model`` / ``--text-model`` or ``--base-model``, as the family's registry
line lists them), a tokenizer (``--tokenizer DIR|train``) and family options
(``--set key=value``). An option of the other kind is a usage error naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from vicap_jobs.cli import choices
from vicap_jobs.models.registry import get_family

FOLDER = click.Path(path_type=Path, file_okay=False)
# CLI flag of each pretrained-folder option (TrainOptions field → flag).
FOLDER_FLAGS = {"vision_model": "--vision-model", "text_model": "--text-model", "base_model": "--base-model"}
# Options only the backbone (CNN+LSTM) families read, by click parameter name.
BACKBONE_ONLY = {
    "backbone": "--backbone",
    "image_size": "--image-size",
    "min_freq": "--min-freq",
    "tokenization": "--tokenization",
    "backbone_weights": "--backbone-weights",
    "weights": "--pretrained/--random-init",
}
# Self-critical training options: only the CNN+LSTM trainer can sample captions for now.
SCST_ONLY = {
    "scst_epochs": "--scst-epochs",
    "scst_samples": "--scst-samples",
    "scst_baseline": "--scst-baseline",
    "scst_lr": "--scst-lr",
}
PRETRAINED_ONLY = {
    **FOLDER_FLAGS,
    "tokenizer": "--tokenizer",
    "tokenizer_vocab_size": "--tokenizer-vocab-size",
    "settings": "--set",
}


def parse_setting(text: str) -> tuple[str, Any]:
    """``key=value`` → (key, value): JSON when it parses (true, 8, 1e-4, ["a"]), a comma list → list, else text."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise click.BadParameter(f"expected key=value, got {text!r}", param_hint="--set")
    raw = raw.strip()
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        pass
    if "," in raw:
        return key, [part.strip() for part in raw.split(",") if part.strip()]
    return key, raw


def train_arguments(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add NAME and every training option to a click command."""
    decorators = [
        click.argument("name"),
        click.option("--family", type=choices.FAMILY, required=True, help="Model family from the registry."),
        click.option("--dataset", required=True, help="Data set name (train split trains, val split early-stops)."),
        click.option(
            "--backbone", type=choices.BACKBONE, default=None, help="CNN+LSTM families: CNN backbone [default: tiny]."
        ),
        click.option(
            "--image-size",
            type=click.IntRange(32, 1024),
            help="CNN+LSTM families: input side in pixels (default 96 for tiny, 224 otherwise).",
        ),
        click.option(
            "--vision-model", type=FOLDER, help="clipcap, vit-seq2seq: local image encoder folder (CLIP / ViT)."
        ),
        click.option("--text-model", type=FOLDER, help="clipcap, vit-seq2seq: local Vietnamese decoder folder."),
        click.option("--base-model", type=FOLDER, help="blip, blip2-lora: local pretrained model folder."),
        click.option(
            "--tokenizer",
            help="Vision-language families: 'train' (byte-level BPE on the train captions) or a local tokenizer folder.",
        ),
        click.option("--tokenizer-vocab-size", type=click.IntRange(300), help="Size of a trained tokenizer (8000)."),
        click.option(
            "--set",
            "settings",
            multiple=True,
            metavar="KEY=VALUE",
            help="Family option, repeatable (e.g. mapping_type=transformer, prefix_length=10, lora_r=8, "
            "lora_targets=q_proj,v_proj, freeze_text=true).",
        ),
        click.option("--epochs", type=click.IntRange(1), help="Maximum epochs (early stopping may end sooner)."),
        click.option(
            "--lr",
            type=click.FloatRange(min=0, min_open=True),
            help="AdamW peak learning rate (default 2e-3; the seed study tried 1e-3, 5e-4, 1e-4).",
        ),
        click.option("--batch-size", type=click.IntRange(1), help="Captions per optimizer step (default 32)."),
        click.option("--grad-accum", type=click.IntRange(1), help="Micro-batches per optimizer step (default 1)."),
        click.option(
            "--max-len",
            type=click.IntRange(3, 512),
            help="Tokens per training caption, BOS and EOS included (default 32); longer ones are cut, with a warning.",
        ),
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
            help="Train the image encoder or freeze it (features cached once). Default: CNN+LSTM frozen with "
            "pretrained weights, fine-tuned with --random-init; vision-language families: the family's default.",
        ),
        click.option(
            "--scst-epochs",
            type=click.IntRange(0),
            help="CNN+LSTM families: after cross-entropy, N epochs of self-critical sequence training (reward: "
            "CIDEr-D of sampled captions against the train references; the best epoch by validation CIDEr-D is kept; "
            "default 0: off). Example: vicap-jobs train synth-scst --family cnn-lstm --dataset viic-synth "
            "--frozen-backbone --scst-epochs 6",
        ),
        click.option(
            "--scst-samples", type=click.IntRange(2), help="SCST: captions sampled per image and step (default 5)."
        ),
        click.option(
            "--scst-baseline",
            type=click.Choice(["greedy", "mean"]),
            help="SCST baseline: the greedy caption's reward (default) or the mean reward of the other samples.",
        ),
        click.option(
            "--scst-lr",
            type=click.FloatRange(min=0, min_open=True),
            help="SCST constant learning rate (default 1e-3, for the tiny demo; ~5e-5 for pretrained backbones).",
        ),
        click.option("--device", default=None, help="cpu, cuda, cuda:N (default cpu)."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _refuse(values: dict[str, Any], flags: dict[str, str], family: str, kind: str) -> None:
    given = [flag for key, flag in flags.items() if values.get(key) not in (None, (), [])]
    if given:
        raise click.UsageError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} not for {kind} {family}")


def options_from_cli(values: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    """(name, family, dataset, TrainOptions values) from the parsed click parameters."""
    name, family, dataset = values.pop("name"), values.pop("family"), values.pop("dataset")
    spec = get_family(family)
    if spec.pretrained:
        scst = [flag for key, flag in SCST_ONLY.items() if values.get(key) not in (None, 0)]
        if scst:
            raise click.UsageError(f"SCST ({', '.join(scst)}) is not available for the {family} family yet")
        for key in SCST_ONLY:
            values.pop(key, None)
        _refuse(values, BACKBONE_ONLY, family, "the vision-language family")
        return name, family, dataset, _pretrained_options(values, spec.inputs, family)
    _refuse(values, PRETRAINED_ONLY, family, "the backbone family")
    for key in (*PRETRAINED_ONLY, "grad_accum"):
        values.pop(key, None)
    return name, family, dataset, _backbone_options(values)


def _pretrained_options(values: dict[str, Any], inputs: Iterable[str], family: str) -> dict[str, Any]:
    """Folders (absolute), tokenizer, ``--set`` overrides and the freeze flag of a vision-language family."""
    for key in BACKBONE_ONLY:
        values.pop(key, None)
    inputs = tuple(inputs)
    wrong = [flag for key, flag in FOLDER_FLAGS.items() if values.get(key) is not None and key not in inputs]
    missing = [FOLDER_FLAGS[key] for key in inputs if values.get(key) is None]
    if wrong or missing:
        takes = " and ".join(FOLDER_FLAGS[key] for key in inputs)
        raise click.UsageError(f"model family {family} takes {takes} DIR")
    overrides = dict(parse_setting(text) for text in values.pop("settings", ()) or ())
    finetune = values.pop("finetune_backbone", None)
    if finetune is not None:
        overrides["freeze_vision"] = not finetune
    options: dict[str, Any] = {k: v for k, v in values.items() if v is not None and k not in FOLDER_FLAGS}
    for key in inputs:
        options[key] = str(Path(values[key]).expanduser().resolve())
    tokenizer = options.get("tokenizer")
    if tokenizer is not None and tokenizer != "train":
        options["tokenizer"] = str(Path(tokenizer).expanduser().resolve())  # the worker's cwd is not ours
    if overrides:
        options["config_overrides"] = overrides
    return options


def _backbone_options(values: dict[str, Any]) -> dict[str, Any]:
    """Backbone, weights, freeze flag and image size of a CNN+LSTM family."""
    backbone = values["backbone"] = values.get("backbone") or "tiny"
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
    return options


def describe_inputs(options: dict[str, Any]) -> str:
    """What the model is built from, for one-line messages: the backbone or the pretrained folders' names."""
    folders = [Path(options[key]).name for key in FOLDER_FLAGS if options.get(key)]
    return " + ".join(folders) if folders else str(options.get("backbone", "tiny"))
