"""``cnn-lstm`` (Show-and-Tell): what only this family does. The shared contract is test_family_contract.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vicap_jobs.data.vocab import BOS_ID
from vicap_jobs.errors import InputError, UnknownNameError
from vicap_jobs.models.cnn_lstm import CNNLSTM, CNNLSTMConfig
from vicap_jobs.models.registry import get_family

V, B = 20, 3


def tiny(**overrides: object) -> CNNLSTM:
    config = CNNLSTMConfig(backbone="tiny", image_size=64, embed_dim=16, hidden_dim=16, dropout=0.3, **overrides)
    torch.manual_seed(0)
    return get_family("cnn-lstm").build(config, V, backbone_weights="random")


def test_registered_through_the_registry() -> None:
    spec = get_family("cnn-lstm")
    assert spec.config_cls is CNNLSTMConfig and spec.model.codec == "vocab"
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


def test_grid_and_state_shapes() -> None:
    model = tiny(num_layers=2).eval()
    features = model.extract_features(torch.randn(B, 3, 64, 64))
    assert features.shape == (B, 128, 4, 4)  # the tiny backbone divides the side by 16
    h, c, skip = model.start(features)
    assert h.shape == c.shape == (B, 2, 16) and skip.shape == (B, 16)
    logits, (h2, c2, skip2) = model.step(torch.full((B,), BOS_ID), (h, c, skip))
    assert logits.shape == (B, V) and skip2 is skip  # the skip vector passes through every step unchanged
    assert model.config.vocab_size == V and model.backbone_frozen


def test_image_vector_added_to_lstm_output() -> None:
    assert isinstance(tiny().image_skip, nn.Identity)
    model = CNNLSTM(CNNLSTMConfig(backbone="tiny", vocab_size=V, embed_dim=8, hidden_dim=12), backbone_weights="random")
    assert isinstance(model.image_skip, nn.Linear) and model.image_skip.out_features == 12


def test_invalid_configs() -> None:
    build = get_family("cnn-lstm").build
    with pytest.raises(InputError, match="vocab_size"):
        build(CNNLSTMConfig(backbone="tiny"), backbone_weights="random")
    with pytest.raises(InputError, match="num_layers"):
        build(CNNLSTMConfig(backbone="tiny", num_layers=0), V, backbone_weights="random")
    with pytest.raises(UnknownNameError, match="tiny"):
        build(CNNLSTMConfig(backbone="resnet"), V, backbone_weights="random")
