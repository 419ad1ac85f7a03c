"""How to build a tiny model of each vision-language family from local folders, for the family contract suite.

A recipe writes tiny random pretrained folders (``save_pretrained``, as ``hf download``
would leave real ones) under a folder and returns the TrainOptions fields that point
the family at them. ``test_pretrained_contract`` runs over every recipe; a registered
family without a recipe here (or a vocabulary family in ``tests/models/tiny_families.py``)
fails ``test_every_registered_family_has_a_tiny_config``. Adding a family: its recipe
function in its own test module and one line in RECIPES.

A variant is config overrides; its :data:`OPTIONS` entry, if any, holds TrainOptions
fields instead (e.g. ``{"tokenizer": "train"}`` where the family's default is another).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.models.hf.tiny_clipcap import tiny_clip_vision, tiny_gpt2
from tests.models.hf.tiny_hf import tiny_blip

OPTIONS = "train_options"  # a variant's TrainOptions fields (not config overrides)


@dataclass(frozen=True)
class Recipe:
    """make(folder) -> TrainOptions fields (pretrained folders, config_overrides); variants: more overrides."""

    family: str
    make: Callable[[Path], dict[str, Any]]
    missing_option: str  # the TrainOptions field whose folder a missing-folder test removes
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})


def blip_inputs(folder: Path) -> dict[str, Any]:
    return {"base_model": str(tiny_blip(folder / "blip"))}


def clipcap_inputs(folder: Path) -> dict[str, Any]:
    """Tiny CLIPVisionModel + tiny GPT-2 with its own GPT-2-style tokenizer (the family's default)."""
    return {"vision_model": str(tiny_clip_vision(folder / "clip")), "text_model": str(tiny_gpt2(folder / "gpt2"))}


RECIPES: dict[str, Recipe] = {
    "blip": Recipe("blip", blip_inputs, "base_model", {"default": {}, "frozen vision": {"freeze_vision": True}}),
    "clipcap": Recipe(
        "clipcap",
        clipcap_inputs,
        "text_model",
        {
            "default": {},
            "transformer mapper": {
                "mapping_type": "transformer",
                "mapper_layers": 2,
                "prefix_length": 4,
                "clip_length": 4,
            },
            "trained tokenizer, frozen gpt2": {"freeze_text": True, OPTIONS: {"tokenizer": "train"}},
        },
    ),
}


def recipe_variants() -> list[tuple[str, str]]:
    """(family, variant) pairs for parametrize."""
    return [(name, variant) for name, recipe in RECIPES.items() for variant in recipe.variants]
