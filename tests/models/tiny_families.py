"""Tiny models of every registered family, for the family contract suite and the engine and export tests.

Each family gives one tiny config (``TINY``) and the config variants the contract
must also hold for; ``test_family_contract`` fails for a registered family that
has no entry here. Models are built through the family registry, like users do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vicap_jobs.models.captioner import StepCaptioner
from vicap_jobs.models.registry import get_family

IMAGE_SIZE = 32


@dataclass(frozen=True)
class TinyFamily:
    """A family's tiny config (fields of its config dataclass) and named variants of it."""

    family: str
    config: dict[str, Any]
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})

    def build(self, vocab_size: int, *, seed: int = 0, **changes: Any) -> StepCaptioner:
        """A random tiny model (eval mode), built through the registry with ``changes`` to the tiny config."""
        spec = get_family(self.family)
        config = spec.config_cls(**{**self.config, **changes})
        torch.manual_seed(seed)
        return spec.build(config, vocab_size, backbone_weights="random").eval()


_LSTM = {"backbone": "tiny", "image_size": IMAGE_SIZE, "embed_dim": 16, "hidden_dim": 24, "dropout": 0.0}

TINY: dict[str, TinyFamily] = {
    "cnn-lstm": TinyFamily("cnn-lstm", _LSTM, {"default": {}, "two layers": {"num_layers": 2}}),
    "cnn-lstm-attn": TinyFamily(
        "cnn-lstm-attn", {**_LSTM, "attention_dim": 16}, {"default": {}, "no gate": {"gate": False}}
    ),
}


def family_variants() -> list[tuple[str, str]]:
    """(family, variant) pairs over every tiny family, for parametrize."""
    return [(name, variant) for name, tiny in TINY.items() for variant in tiny.variants]
