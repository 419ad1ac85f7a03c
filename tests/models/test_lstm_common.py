"""What the CNN+LSTM families share through ``models/lstm_common.py``: backbone freezing, fp16 features, PAD."""

from __future__ import annotations

import pytest
import torch

from tests.models.tiny_families import TINY
from vicap_jobs.data.images import Preprocessing
from vicap_jobs.data.vocab import BOS_ID, PAD_ID
from vicap_jobs.models.lstm_common import LSTMCaptioner
from vicap_jobs.models.registry import LSTM_TRAINER, family_names, get_family

V, B, T = 20, 3, 6
LSTM_FAMILIES = [name for name in family_names() if get_family(name).trainer == LSTM_TRAINER]


def tiny(family: str, **changes: object) -> LSTMCaptioner:
    model = TINY[family].build(V, dropout=0.3, **changes)
    assert isinstance(model, LSTMCaptioner)
    return model


def tokens_in(batch: int = B, length: int = T) -> torch.Tensor:
    tokens = torch.randint(4, V, (batch, length), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = BOS_ID
    return tokens


def test_both_families_are_lstm_captioners() -> None:
    assert LSTM_FAMILIES == ["cnn-lstm", "cnn-lstm-attn"]


@pytest.mark.parametrize("family", LSTM_FAMILIES)
def test_frozen_backbone_stays_in_eval_mode_and_gets_no_gradient(family: str) -> None:
    model = tiny(family).train()
    assert model.backbone_frozen and not model.backbone.training and model.embedding.training
    assert model.feature_extractor() is model.backbone
    assert not any(p.requires_grad for p in model.backbone.parameters())
    features = model.extract_features(torch.randn(2, 3, 32, 32))
    model(features, tokens_in(2)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.output.weight.grad is not None


@pytest.mark.parametrize("family", LSTM_FAMILIES)
def test_finetune_backbone_trains_it(family: str) -> None:
    model = tiny(family, finetune_backbone=True).train()
    assert model.backbone.training and not model.backbone_frozen
    assert all(p.requires_grad for p in model.backbone.parameters())
    model(model.extract_features(torch.randn(2, 3, 32, 32)), tokens_in(2)).sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters())


@pytest.mark.parametrize("family", LSTM_FAMILIES)
def test_fp16_cached_features_are_accepted(family: str) -> None:
    model = tiny(family).eval()
    features, tokens = torch.randn(B, 128, 2, 2).half(), tokens_in()
    with torch.no_grad():
        torch.testing.assert_close(model(features, tokens), model(features.float(), tokens))


@pytest.mark.parametrize("family", LSTM_FAMILIES)
def test_pad_embedding_is_zero(family: str) -> None:
    assert torch.count_nonzero(tiny(family).embedding.weight[PAD_ID]) == 0


@pytest.mark.parametrize("family", LSTM_FAMILIES)
def test_preprocessing_squashes_at_the_config_image_size(family: str) -> None:
    policy = get_family(family).model.preprocessing(tiny(family).config)
    assert policy == Preprocessing(32) and policy.resize == "squash" and policy.resample == "bicubic"
