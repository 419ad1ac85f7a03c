"""How to build a tiny model of each vision-language family from local folders, for the family contract suite.

A recipe writes tiny random pretrained folders (``save_pretrained``, as ``hf download``
would leave real ones) under a folder and returns the TrainOptions fields that point
the family at them. ``test_pretrained_contract`` runs over every recipe; a registered
family without a recipe here (or a vocabulary family in ``tests/models/tiny_families.py``)
fails ``test_every_registered_family_has_a_tiny_config``. Adding a family: its recipe
function in its own test module and one line in RECIPES.

A variant is config overrides (a :class:`Made` value names another folder ``make`` wrote);
the recipe's ``options`` give a variant TrainOptions fields too (e.g. ``{"tokenizer": "train"}``
where the family's default is another).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.models.hf.tiny_blip2 import tiny_blip2
from tests.models.hf.tiny_clipcap import tiny_clip_vision, tiny_gpt2
from tests.models.hf.tiny_hf import tiny_blip
from tests.models.hf.tiny_vit import vit_seq2seq_inputs
from vicap_jobs.training.options import TrainOptions


@dataclass(frozen=True)
class Made:
    """A variant's override naming a folder the recipe's ``make`` wrote: ``folder / name`` once made."""

    name: str


@dataclass(frozen=True)
class Recipe:
    """make(folder) -> TrainOptions fields (pretrained folders, config_overrides); variants: more overrides
    (a :class:`Made` value picks another folder ``make`` wrote, e.g. a second decoder).

    options: TrainOptions fields of a variant (e.g. ``tokenizer="train"``, a longer schedule).
    """

    family: str
    make: Callable[[Path], dict[str, Any]]
    missing_option: str  # the TrainOptions field whose folder a missing-folder test removes
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def overrides(self, variant: str, folder: Path) -> dict[str, Any]:
        """The variant's config overrides, each :class:`Made` value as the path ``make(folder)`` wrote."""
        return {
            key: str(folder / value.name) if isinstance(value, Made) else value
            for key, value in self.variants[variant].items()
        }


def blip_inputs(folder: Path) -> dict[str, Any]:
    return {"base_model": str(tiny_blip(folder / "blip"))}


def blip2_inputs(folder: Path) -> dict[str, Any]:
    return {"base_model": str(tiny_blip2(folder / "blip2"))}


BLIP2_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},  # the base folder's tokenizer, Q-Former frozen
    "trained tokenizer": {},  # fresh embeddings, trained through the adapter
    "qformer trained": {"train_qformer": True},
}
BLIP2_OPTIONS: dict[str, dict[str, Any]] = {
    "trained tokenizer": {"tokenizer": "train", "lr": 1e-2}
}  # fresh embeddings: more lr


def clipcap_inputs(folder: Path) -> dict[str, Any]:
    """Tiny CLIPVisionModel + tiny GPT-2 with its own GPT-2-style tokenizer (the family's default)."""
    return {"vision_model": str(tiny_clip_vision(folder / "clip")), "text_model": str(tiny_gpt2(folder / "gpt2"))}


CLIPCAP_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "transformer mapper": {"mapping_type": "transformer", "mapper_layers": 2, "prefix_length": 4, "clip_length": 4},
    "trained tokenizer, frozen gpt2": {"freeze_text": True},
}
CLIPCAP_OPTIONS: dict[str, dict[str, Any]] = {"trained tokenizer, frozen gpt2": {"tokenizer": "train"}}

RECIPES: dict[str, Recipe] = {
    "blip": Recipe("blip", blip_inputs, "base_model", {"default": {}, "frozen vision": {"freeze_vision": True}}),
    "blip2-lora": Recipe("blip2-lora", blip2_inputs, "base_model", BLIP2_VARIANTS, BLIP2_OPTIONS),
    "clipcap": Recipe("clipcap", clipcap_inputs, "text_model", CLIPCAP_VARIANTS, CLIPCAP_OPTIONS),
    "vit-seq2seq": Recipe(
        "vit-seq2seq",
        vit_seq2seq_inputs,
        "text_model",
        {
            "default": {},  # a GPT-2 decoder with its own tokenizer
            "mbart decoder": {"text_model": Made("mbart")},  # BARTpho's architecture, a trained tokenizer
            "frozen encoder, projected": {"freeze_vision": True, "text_model": Made("gpt2-wide")},
        },
    ),
}


def tiny_options(inputs: dict[str, Any], overrides: dict[str, Any], **changes: Any) -> TrainOptions:
    """TrainOptions of a tiny run on the colour set: the recipe's folders, ``overrides`` for the config, ``changes``."""
    values: dict[str, Any] = dict(
        epochs=4,
        lr=3e-3,
        batch_size=16,
        warmup_steps=2,
        tokenizer_vocab_size=300,
        decode_max_len=8,
        progress_bar=False,
        max_len=12,
    )
    values.update(changes)
    extra = dict(inputs.pop("config_overrides", {}))
    return TrainOptions(**values, **inputs, config_overrides={**extra, **overrides})


def recipe_variants() -> list[tuple[str, str]]:
    """(family, variant) pairs for parametrize."""
    return [(name, variant) for name, recipe in RECIPES.items() for variant in recipe.variants]
