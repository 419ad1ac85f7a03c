"""The step-wise captioner contract: what the torch engines, the ONNX exporter and the shared search use.

- ``extract_features(pixels (B, 3, S, S)) -> features (B, ...)``: the image encoder only;
- ``forward(features, tokens_in (B, T)) -> logits (B, T, V)``: teacher forcing;
- ``start(features) -> DecoderState`` and ``step(tokens (B,), state) -> (logits (B, V), state)``,
  where the state is a tuple of batch-first tensors (reorderable with ``index_select(0, ...)``),
  so :mod:`vicap_jobs.models.decoding` can search it and the exporter can trace it.

``feature_extractor()`` is the module ``extract_features`` runs: the torch-bf16 engine
converts it to channels_last and the feature cache hashes its weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vicap_jobs.models.decoding import DecoderState


class StepCaptioner(nn.Module):
    """Base of every model searched step by step; subclasses implement the four methods below."""

    config: Any  # the family's config dataclass

    @property
    def backbone_frozen(self) -> bool:
        """True when the feature extractor is not trained (its features can be cached)."""
        return False

    def feature_extractor(self) -> nn.Module:
        """The module ``extract_features`` runs (the whole model unless a subclass says otherwise)."""
        return self

    def extract_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalized float32 → image features (B, ...)."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor, tokens_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: features, tokens_in (B, T) → logits (B, T, V)."""
        raise NotImplementedError

    def start(self, features: torch.Tensor) -> DecoderState:
        """Features → the decoder state before the first token."""
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One token per row: tokens (B,) → logits (B, V) and the next state."""
        raise NotImplementedError
