"""``cnn-lstm-attn`` (Show-Attend-Tell): the attention itself. The shared contract is test_family_contract.py."""

from __future__ import annotations

import pytest
import torch

from vicap_jobs.data.vocab import BOS_ID
from vicap_jobs.errors import InputError
from vicap_jobs.models.cnn_lstm_attn import CNNLSTMAttn, CNNLSTMAttnConfig
from vicap_jobs.models.registry import get_family

V, B, T, N = 20, 3, 6, 16  # N: 4×4 grid of the tiny backbone at 64 px


def tiny(**overrides: object) -> CNNLSTMAttn:
    config = CNNLSTMAttnConfig(
        backbone="tiny", image_size=64, embed_dim=16, hidden_dim=24, attention_dim=12, dropout=0.3, **overrides
    )
    torch.manual_seed(0)
    return get_family("cnn-lstm-attn").build(config, V, backbone_weights="random")


def tokens_in(batch: int = B, length: int = T) -> torch.Tensor:
    tokens = torch.randint(4, V, (batch, length))
    tokens[:, 0] = BOS_ID
    return tokens


def test_registered_through_the_registry() -> None:
    spec = get_family("cnn-lstm-attn")
    assert spec.config_cls is CNNLSTMAttnConfig and spec.model.codec == "vocab"
    assert spec.engine_names == (
        "onnx",
        "torch",
        "torch-bf16",
        "onnx-int8",
        "openvino",
        "openvino-bf16",
        "openvino-int8",
    ) and spec.exports == ("onnx",)
    assert spec.model.layout.name == "safetensors"


def test_state_shapes() -> None:
    model = tiny().eval()
    features = model.extract_features(torch.randn(B, 3, 64, 64))
    assert features.shape == (B, 128, 4, 4)
    state = model.start(features)
    assert [part.shape for part in state] == [(B, N, 128), (B, N, 12), (B, 24), (B, 24)]
    logits, new_state = model.step(torch.full((B,), BOS_ID), state)
    assert logits.shape == (B, V)
    assert new_state[0] is state[0] and new_state[1] is state[1]  # memory and keys pass through every step


def test_start_precomputes_the_encoder_projection() -> None:
    model = tiny().eval()
    features = torch.randn(B, 128, 4, 4)
    memory, memory_proj, _, _ = model.start(features)
    torch.testing.assert_close(memory, features.flatten(2).transpose(1, 2))
    torch.testing.assert_close(memory_proj, model.attention.encoder_proj(memory))


@pytest.mark.parametrize("gate", [True, False])
def test_attention_weights_are_a_distribution_over_the_grid(gate: bool) -> None:
    model = tiny(gate=gate).eval()
    assert (model.gate is not None) == gate
    with torch.no_grad():
        logits, alphas = model.forward_with_attention(torch.randn(B, 128, 4, 4), tokens_in())
    assert logits.shape == (B, T, V) and alphas.shape == (B, T, N)
    torch.testing.assert_close(alphas.sum(dim=2), torch.ones(B, T))
    assert alphas.min() >= 0


def test_invalid_config() -> None:
    with pytest.raises(InputError, match="attention_dim"):
        get_family("cnn-lstm-attn").build(
            CNNLSTMAttnConfig(backbone="tiny", attention_dim=0), V, backbone_weights="random"
        )
