"""``cnn-lstm``: Show-and-Tell. The pooled image vector is the LSTM's first input step.

image grid → global average pool → linear → image vector v (B, E);
LSTM from a zero state reads v, then the words; logits come from the LSTM
output plus v (projected to the hidden size when E ≠ H), as the seed design did.
Teacher forcing runs ``nn.LSTM`` over whole sequences (cuDNN when on GPU);
``start``/``step`` run the same weights one step at a time as plain ops.

``FAMILY`` at the bottom declares the rest: checkpoints in the safetensors layout
(``config.json`` + ``model.safetensors`` + ``vocab.json``), a Vocabulary as text
codec, squash/ImageNet preprocessing. Its registry line (``models/registry.py``,
"cnn-lstm") names its engines (onnx, torch, torch-bf16), its ONNX export and its
trainer (``training/lstm.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vicap_jobs.errors import InputError
from vicap_jobs.models.backbones import BackboneWeights
from vicap_jobs.models.checkpoint import SafetensorsLayout
from vicap_jobs.models.decoding import DecoderState
from vicap_jobs.models.lstm_common import LSTMCaptionConfig, LSTMCaptioner, config_for_build, squash_preprocessing
from vicap_jobs.models.registry import ModelFamily


@dataclass
class CNNLSTMConfig(LSTMCaptionConfig):
    """Show-and-Tell hyper-parameters (the common ones, plus the LSTM depth)."""

    num_layers: int = 1

    def validate(self) -> None:
        super().validate()
        if self.num_layers < 1:
            raise InputError(f"num_layers must be at least 1, got {self.num_layers}")


class CNNLSTM(LSTMCaptioner):
    """Show-and-Tell captioner. State: (h (B, L, H), c (B, L, H), image_skip (B, H))."""

    config: CNNLSTMConfig

    def __init__(self, config: CNNLSTMConfig, *, backbone_weights: BackboneWeights) -> None:
        super().__init__(config, backbone_weights=backbone_weights)
        self.image_proj = nn.Linear(self.feature_channels, config.embed_dim)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_dim, num_layers=config.num_layers, batch_first=True)
        same = config.embed_dim == config.hidden_dim
        self.image_skip = nn.Identity() if same else nn.Linear(config.embed_dim, config.hidden_dim)

    def image_vector(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone grid (B, C, h, w) → image vector (B, E)."""
        pooled = self.match_dtype(features).mean(dim=(2, 3))  # (B, C)
        return self.dropout(self.image_proj(pooled))

    def forward(self, features: torch.Tensor, tokens_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: features (B, C, h, w), tokens_in (B, T) → logits (B, T, V)."""
        image = self.image_vector(features)  # (B, E)
        words = self.dropout(self.embedding(tokens_in))  # (B, T, E)
        inputs = torch.cat([image.unsqueeze(1), words], dim=1)  # (B, 1 + T, E)
        outputs, _ = self.lstm(inputs)  # (B, 1 + T, H)
        hidden = outputs[:, 1:] + self.image_skip(image).unsqueeze(1)  # (B, T, H)
        return self.logits(hidden)

    def recur(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of ``self.lstm`` with its own weights: x (B, E), h and c (B, L, H) → new h, c.

        The same gate math as ``nn.LSTM`` (gate order i, f, g, o), written as
        plain ops so that ``start``/``step`` export to ONNX on any torch version
        and never need cuDNN's packed weights.
        """
        hs, cs = [], []
        for layer in range(self.config.num_layers):
            gates = nn.functional.linear(
                x, getattr(self.lstm, f"weight_ih_l{layer}"), getattr(self.lstm, f"bias_ih_l{layer}")
            ) + nn.functional.linear(
                h[:, layer], getattr(self.lstm, f"weight_hh_l{layer}"), getattr(self.lstm, f"bias_hh_l{layer}")
            )  # (B, 4H)
            i, f, g, o = gates.chunk(4, dim=1)  # (B, H) each
            c_layer = torch.sigmoid(f) * c[:, layer] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c_layer)
            hs.append(x)
            cs.append(c_layer)
        return torch.stack(hs, dim=1), torch.stack(cs, dim=1)  # (B, L, H) each

    def start(self, features: torch.Tensor) -> DecoderState:
        """Run the image step from a zero state: features (B, C, h, w) → (h, c, image_skip)."""
        image = self.image_vector(features)  # (B, E)
        zeros = image.new_zeros(image.shape[0], self.config.num_layers, self.config.hidden_dim)  # (B, L, H)
        h, c = self.recur(image, zeros, zeros)
        return h, c, self.image_skip(image)  # (B, L, H), (B, L, H), (B, H)

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One word: tokens (B,) → logits (B, V) and the next state."""
        h, c, skip = state
        h, c = self.recur(self.dropout(self.embedding(tokens)), h, c)  # (B, L, H) each
        return self.logits(h[:, -1] + skip), (h, c, skip)  # (B, V)


def build(
    config: CNNLSTMConfig, vocab_size: int | None = None, *, backbone_weights: BackboneWeights = "pretrained"
) -> CNNLSTM:
    """A fresh model; ``vocab_size`` overrides ``config.vocab_size`` when given."""
    return CNNLSTM(config_for_build(config, vocab_size), backbone_weights=backbone_weights)


def build_empty(config: CNNLSTMConfig) -> CNNLSTM:
    """The model a checkpoint's weights are loaded into: no backbone weight file is looked for."""
    return build(config, backbone_weights="random")


FAMILY = ModelFamily(
    config_cls=CNNLSTMConfig,
    build=build,
    layout=SafetensorsLayout(build_empty),  # config.json + model.safetensors + vocab.json
    codec="vocab",
    preprocessing=squash_preprocessing,
)
