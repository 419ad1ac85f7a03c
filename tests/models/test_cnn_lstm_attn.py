"""``cnn-lstm-attn`` (Show-Attend-Tell): the model contract and the attention itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from vicap_jobs.data.vocab import BOS_ID, PAD_ID
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
    assert spec.config_cls is CNNLSTMAttnConfig
    assert spec.engines == ("onnx", "torch", "torch-bf16") and spec.exportable == ("onnx",)


def test_contract_shapes() -> None:
    model = tiny().eval()
    features = model.extract_features(torch.randn(B, 3, 64, 64))
    assert features.shape == (B, 128, 4, 4)
    assert model(features, tokens_in()).shape == (B, T, V)
    state = model.start(features)
    assert [part.shape for part in state] == [(B, N, 128), (B, N, 12), (B, 24), (B, 24)]
    logits, new_state = model.step(torch.full((B,), BOS_ID), state)
    assert logits.shape == (B, V)
    assert [part.shape for part in new_state] == [part.shape for part in state]


def test_start_precomputes_the_encoder_projection() -> None:
    model = tiny().eval()
    features = torch.randn(B, 128, 4, 4)
    memory, memory_proj, _, _ = model.start(features)
    torch.testing.assert_close(memory, features.flatten(2).transpose(1, 2))
    torch.testing.assert_close(memory_proj, model.attention.encoder_proj(memory))


@pytest.mark.parametrize("gate", [True, False])
def test_teacher_forcing_equals_stepping(gate: bool) -> None:
    model = tiny(gate=gate).eval()
    features = torch.randn(B, 128, 4, 4)
    tokens = tokens_in()
    with torch.no_grad():
        forced = model(features, tokens)
        state = model.start(features)
        for t in range(T):
            logits, state = model.step(tokens[:, t], state)
            torch.testing.assert_close(logits, forced[:, t], rtol=1e-5, atol=1e-5)


def test_attention_weights_are_a_distribution_over_the_grid() -> None:
    model = tiny().eval()
    with torch.no_grad():
        logits, alphas = model.forward_with_attention(torch.randn(B, 128, 4, 4), tokens_in())
    assert logits.shape == (B, T, V) and alphas.shape == (B, T, N)
    torch.testing.assert_close(alphas.sum(dim=2), torch.ones(B, T))
    assert alphas.min() >= 0


def test_padding_does_not_change_real_positions() -> None:
    model = tiny().eval()
    features, tokens = torch.randn(B, 128, 4, 4), tokens_in(length=4)
    padded = torch.cat([tokens, torch.full((B, 3), PAD_ID)], dim=1)  # (B, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(features, padded)[:, :4], model(features, tokens))
    assert torch.count_nonzero(model.embedding.weight[PAD_ID]) == 0


def test_state_rows_reorder_like_the_batch() -> None:
    model = tiny().eval()
    features, tokens, order = torch.randn(B, 128, 4, 4), torch.tensor([5, 6, 7]), torch.tensor([2, 0, 0])
    with torch.no_grad():
        logits, _ = model.step(tokens, model.start(features))
        reordered, _ = model.step(tokens[order], tuple(part.index_select(0, order) for part in model.start(features)))
    torch.testing.assert_close(reordered, logits[order])


def test_frozen_backbone_by_default_and_finetune_flag() -> None:
    frozen = tiny().train()
    assert frozen.backbone_frozen and not frozen.backbone.training
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    tuned = tiny(finetune_backbone=True).train()
    assert tuned.backbone.training and all(p.requires_grad for p in tuned.backbone.parameters())
    tuned(tuned.extract_features(torch.randn(2, 3, 64, 64)), tokens_in(2)).sum().backward()
    assert all(p.grad is not None for p in tuned.backbone.parameters())


def test_fp16_cached_features_are_accepted() -> None:
    model = tiny().eval()
    features, tokens = torch.randn(B, 128, 4, 4).half(), tokens_in()
    with torch.no_grad():
        torch.testing.assert_close(model(features, tokens), model(features.float(), tokens))


def test_invalid_config() -> None:
    with pytest.raises(InputError, match="attention_dim"):
        get_family("cnn-lstm-attn").build(
            CNNLSTMAttnConfig(backbone="tiny", attention_dim=0), V, backbone_weights="random"
        )


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_start_and_step_export_to_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = tiny().eval()

    class Start(nn.Module):
        def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return model.start(features)

    class Step(nn.Module):
        def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
            logits, new_state = model.step(tokens, state)
            return (logits, *new_state)

    batch = torch.export.Dim("batch")
    features = torch.randn(2, 128, 4, 4)
    torch.onnx.export(Start(), (features,), tmp_path / "start.onnx", dynamo=True, dynamic_shapes=[{0: batch}])
    state = model.start(features)
    dynamic = ({0: batch}, tuple({0: batch} for _ in state))
    torch.onnx.export(
        Step(), (torch.tensor([1, 5]), *state), tmp_path / "step.onnx", dynamo=True, dynamic_shapes=dynamic
    )

    start, step = (ort.InferenceSession(str(tmp_path / name)) for name in ("start.onnx", "step.onnx"))
    features3, tokens3 = torch.randn(3, 128, 4, 4), torch.tensor([1, 4, 9])  # another batch size
    state3 = start.run(None, {start.get_inputs()[0].name: features3.numpy()})
    names = [i.name for i in step.get_inputs()]
    outputs = step.run(None, dict(zip(names, [tokens3.numpy(), *state3], strict=True)))
    with torch.no_grad():
        expected = model.step(tokens3, model.start(features3))
    torch.testing.assert_close(torch.from_numpy(outputs[0]), expected[0], rtol=1e-4, atol=1e-5)
    for got, want in zip(outputs[1:], expected[1], strict=True):
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-5)
