"""``cnn-lstm-attn``: Show-Attend-Tell with additive (Bahdanau) attention over the feature grid.

At every step, from the previous hidden state h:
e = v^T tanh(W_enc·feat + W_dec·h) over the N = h*w grid positions,
alpha = softmax(e), context = sum(alpha * feat), optionally gated by
sigmoid(f_beta(h)); the LSTMCell reads [word embedding, context].
h and c start from linear maps of the mean feature. ``start`` computes
W_enc·feat once and keeps it in the state.

``FAMILY`` at the bottom declares the rest: checkpoints in the safetensors layout
(``config.json`` + ``model.safetensors`` + ``vocab.json``), a Vocabulary as text
codec, squash/ImageNet preprocessing. Its registry line (``models/registry.py``,
"cnn-lstm-attn") names its engines (onnx, torch, torch-bf16), its ONNX export and its
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
class CNNLSTMAttnConfig(LSTMCaptionConfig):
    """Show-Attend-Tell hyper-parameters: the common ones plus attention size and gating."""

    attention_dim: int = 256
    gate: bool = True  # f_beta: sigmoid gate on the context vector, from h

    def validate(self) -> None:
        super().validate()
        if self.attention_dim <= 0:
            raise InputError(f"attention_dim must be positive, got {self.attention_dim}")


class AdditiveAttention(nn.Module):
    """Bahdanau attention: scores each grid position against the decoder state."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(feature_dim, attention_dim)  # W_enc
        self.decoder_proj = nn.Linear(hidden_dim, attention_dim)  # W_dec
        self.score = nn.Linear(attention_dim, 1)  # v

    def forward(
        self, memory: torch.Tensor, memory_proj: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, N, C), memory_proj (B, N, A), hidden (B, H) → context (B, C), alpha (B, N)."""
        query = self.decoder_proj(hidden).unsqueeze(1)  # (B, 1, A)
        energy = self.score(torch.tanh(memory_proj + query)).squeeze(2)  # (B, N)
        alpha = torch.softmax(energy, dim=1)  # (B, N)
        context = (alpha.unsqueeze(2) * memory).sum(dim=1)  # (B, C)
        return context, alpha


class CNNLSTMAttn(LSTMCaptioner):
    """Show-Attend-Tell captioner.

    State: (memory (B, N, C), memory_proj (B, N, A), h (B, H), c (B, H)).
    """

    config: CNNLSTMAttnConfig

    def __init__(self, config: CNNLSTMAttnConfig, *, backbone_weights: BackboneWeights) -> None:
        super().__init__(config, backbone_weights=backbone_weights)
        channels, hidden = self.feature_channels, config.hidden_dim
        self.attention = AdditiveAttention(channels, hidden, config.attention_dim)
        self.init_h = nn.Linear(channels, hidden)
        self.init_c = nn.Linear(channels, hidden)
        self.gate = nn.Linear(hidden, channels) if config.gate else None  # f_beta
        self.cell = nn.LSTMCell(config.embed_dim + channels, hidden)

    def start(self, features: torch.Tensor) -> DecoderState:
        """Features (B, C, h, w) → (memory, memory_proj, h, c) before the first word."""
        memory = self.match_dtype(features).flatten(2).transpose(1, 2)  # (B, N, C)
        mean = memory.mean(dim=1)  # (B, C)
        return memory, self.attention.encoder_proj(memory), self.init_h(mean), self.init_c(mean)

    def step_with_attention(
        self, tokens: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """Like :meth:`step` but also returns the attention weights alpha (B, N)."""
        memory, memory_proj, h, c = state
        context, alpha = self.attention(memory, memory_proj, h)  # (B, C), (B, N)
        if self.gate is not None:
            context = torch.sigmoid(self.gate(h)) * context  # (B, C)
        word = self.dropout(self.embedding(tokens))  # (B, E)
        h, c = self.cell(torch.cat([word, context], dim=1), (h, c))  # (B, H) each
        return self.logits(h), (memory, memory_proj, h, c), alpha

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One word: tokens (B,) → logits (B, V) and the next state."""
        logits, state, _ = self.step_with_attention(tokens, state)
        return logits, state

    def forward_with_attention(
        self, features: torch.Tensor, tokens_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing that also returns alphas (B, T, N), e.g. for doubly stochastic regularization."""
        state = self.start(features)
        logits, alphas = [], []
        for t in range(tokens_in.shape[1]):
            step_logits, state, alpha = self.step_with_attention(tokens_in[:, t], state)
            logits.append(step_logits)
            alphas.append(alpha)
        return torch.stack(logits, dim=1), torch.stack(alphas, dim=1)  # (B, T, V), (B, T, N)

    def forward(self, features: torch.Tensor, tokens_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: features (B, C, h, w), tokens_in (B, T) → logits (B, T, V)."""
        return self.forward_with_attention(features, tokens_in)[0]


def build(
    config: CNNLSTMAttnConfig, vocab_size: int | None = None, *, backbone_weights: BackboneWeights = "pretrained"
) -> CNNLSTMAttn:
    """A fresh model; ``vocab_size`` overrides ``config.vocab_size`` when given."""
    return CNNLSTMAttn(config_for_build(config, vocab_size), backbone_weights=backbone_weights)


def build_empty(config: CNNLSTMAttnConfig) -> CNNLSTMAttn:
    """The model a checkpoint's weights are loaded into: no backbone weight file is looked for."""
    return build(config, backbone_weights="random")


FAMILY = ModelFamily(
    config_cls=CNNLSTMAttnConfig,
    build=build,
    layout=SafetensorsLayout(build_empty),  # config.json + model.safetensors + vocab.json
    codec="vocab",
    preprocessing=squash_preprocessing,
)
