"""Pieces shared by the CNN+LSTM families: config fields, backbone handling, embedding, output layer.

A family subclasses :class:`LSTMCaptionConfig` (adding its own fields) and
:class:`LSTMCaptioner` (adding ``forward``, ``start`` and ``step`` of the
step-wise contract in :mod:`vicap_jobs.models.captioner`); its features are the
backbone grid (B, C, h, w). Both families store checkpoints in the safetensors
layout with a :class:`~vicap_jobs.data.vocab.Vocabulary` and squash their images
to ``image_size`` with ImageNet statistics (:func:`squash_preprocessing`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from vicap_jobs.data.images import Preprocessing
from vicap_jobs.data.vocab import PAD_ID
from vicap_jobs.errors import InputError
from vicap_jobs.models.backbones import BackboneWeights, backbone_spec, build_backbone
from vicap_jobs.models.captioner import StepCaptioner

ConfigT = TypeVar("ConfigT", bound="LSTMCaptionConfig")


@dataclass
class LSTMCaptionConfig:
    """Hyper-parameters common to the CNN+LSTM families; stored in every checkpoint."""

    vocab_size: int = 0  # set from the vocabulary by ``build``
    backbone: str = "densenet201"
    image_size: int = 224
    embed_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.5
    finetune_backbone: bool = False  # False: backbone frozen, kept in eval mode

    def validate(self) -> None:
        """Raise InputError on values no model can be built from."""
        backbone_spec(self.backbone)  # UnknownNameError lists valid names
        for name in ("vocab_size", "image_size", "embed_dim", "hidden_dim"):
            if getattr(self, name) <= 0:
                raise InputError(f"{type(self).__name__}.{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size < 4:
            raise InputError(f"vocab_size must cover PAD, BOS, EOS and UNK (4), got {self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")


def config_for_build(config: ConfigT, vocab_size: int | None) -> ConfigT:
    """A validated copy of ``config`` with ``vocab_size`` filled in when given."""
    if vocab_size is not None:
        config = dataclasses.replace(config, vocab_size=vocab_size)
    config.validate()
    return config


def squash_preprocessing(config: LSTMCaptionConfig) -> Preprocessing:
    """Squash to image_size × image_size (bicubic), ImageNet mean and std: what the backbones were trained on."""
    return Preprocessing(config.image_size)


class LSTMCaptioner(StepCaptioner):
    """Backbone + word embedding + vocabulary layer; families add the recurrent decoder."""

    def __init__(self, config: LSTMCaptionConfig, *, backbone_weights: BackboneWeights) -> None:
        super().__init__()
        self.config = config
        self.backbone, self.feature_channels = build_backbone(config.backbone, weights=backbone_weights)
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.hidden_dim, config.vocab_size)
        if self.backbone_frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @property
    def backbone_frozen(self) -> bool:
        """True when the backbone is not trained (its features can be cached)."""
        return not self.config.finetune_backbone

    def train(self, mode: bool = True) -> LSTMCaptioner:
        """Like ``nn.Module.train`` but a frozen backbone stays in eval mode (BatchNorm statistics)."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def feature_extractor(self) -> nn.Module:
        """The CNN backbone."""
        return self.backbone

    def extract_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalized float32 → backbone grid (B, C, h, w)."""
        return self.backbone(pixels)

    def match_dtype(self, features: torch.Tensor) -> torch.Tensor:
        """Cast features (e.g. fp16 from the feature cache) to the decoder's dtype."""
        return features.to(self.output.weight.dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden_dim) → (..., vocab_size), with dropout in train mode."""
        return self.output(self.dropout(hidden))
