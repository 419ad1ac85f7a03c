"""``cnn-lstm`` (Show-and-Tell): the model contract on a tiny config."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from vicap_jobs.data.vocab import BOS_ID, PAD_ID
from vicap_jobs.errors import InputError, UnknownNameError
from vicap_jobs.models.cnn_lstm import CNNLSTM, CNNLSTMConfig
from vicap_jobs.models.registry import get_family

V, B, T = 20, 3, 6


def tiny(**overrides: object) -> CNNLSTM:
    config = CNNLSTMConfig(backbone="tiny", image_size=64, embed_dim=16, hidden_dim=16, dropout=0.3, **overrides)
    torch.manual_seed(0)
    return get_family("cnn-lstm").build(config, V, backbone_weights="random")


def tokens_in(batch: int = B, length: int = T) -> torch.Tensor:
    tokens = torch.randint(4, V, (batch, length))
    tokens[:, 0] = BOS_ID
    return tokens


def test_registered_through_the_registry() -> None:
    spec = get_family("cnn-lstm")
    assert spec.config_cls is CNNLSTMConfig
    assert spec.engines == ("onnx", "torch", "torch-bf16") and spec.exportable == ("onnx",)


def test_contract_shapes() -> None:
    model = tiny().eval()
    features = model.extract_features(torch.randn(B, 3, 64, 64))
    assert features.shape == (B, 128, 4, 4)
    assert model(features, tokens_in()).shape == (B, T, V)
    state = model.start(features)
    assert isinstance(state, tuple) and all(part.shape[0] == B for part in state)
    logits, new_state = model.step(torch.full((B,), BOS_ID), state)
    assert logits.shape == (B, V)
    assert [part.shape for part in new_state] == [part.shape for part in state]
    assert model.config.vocab_size == V and model.backbone_frozen


def test_teacher_forcing_equals_stepping() -> None:
    model = tiny(num_layers=2).eval()
    features = torch.randn(B, 128, 4, 4)
    tokens = tokens_in()
    with torch.no_grad():
        forced = model(features, tokens)
        state = model.start(features)
        for t in range(T):
            logits, state = model.step(tokens[:, t], state)
            torch.testing.assert_close(logits, forced[:, t], rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_real_positions() -> None:
    model = tiny().eval()
    features = torch.randn(B, 128, 4, 4)
    tokens = tokens_in(length=4)
    padded = torch.cat([tokens, torch.full((B, 3), PAD_ID)], dim=1)  # (B, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(features, padded)[:, :4], model(features, tokens))
    assert torch.count_nonzero(model.embedding.weight[PAD_ID]) == 0


def test_state_rows_reorder_like_the_batch() -> None:
    model = tiny().eval()
    features, tokens = torch.randn(B, 128, 4, 4), torch.tensor([5, 6, 7])
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        logits, state = model.step(tokens, model.start(features))
        reordered, _ = model.step(tokens[order], tuple(part.index_select(0, order) for part in model.start(features)))
    torch.testing.assert_close(reordered, logits[order])
    assert all(part.shape[0] == B for part in state)


def test_frozen_backbone_stays_in_eval_mode_and_gets_no_gradient() -> None:
    model = tiny().train()
    assert not model.backbone.training and model.embedding.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    features = model.extract_features(torch.randn(2, 3, 64, 64))
    model(features, tokens_in(2)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.output.weight.grad is not None


def test_finetune_backbone_trains_it() -> None:
    model = tiny(finetune_backbone=True).train()
    assert model.backbone.training and not model.backbone_frozen
    model(model.extract_features(torch.randn(2, 3, 64, 64)), tokens_in(2)).sum().backward()
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_fp16_cached_features_are_accepted() -> None:
    model = tiny().eval()
    features, tokens = torch.randn(B, 128, 4, 4).half(), tokens_in()
    with torch.no_grad():
        torch.testing.assert_close(model(features, tokens), model(features.float(), tokens))


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


def test_train_is_a_lazy_wrapper_around_the_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []
    fake = types.ModuleType("vicap_jobs.training.trainer")
    fake.train_model = lambda **kwargs: calls.append(kwargs) or "result"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vicap_jobs.training.trainer", fake)
    assert get_family("cnn-lstm").train(epochs=1) == "result"
    assert calls == [{"family": "cnn-lstm", "epochs": 1}]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_start_and_step_export_to_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = tiny().eval()

    class Start(nn.Module):
        def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return model.start(features)

    class Step(nn.Module):
        def forward(self, tokens: torch.Tensor, h: torch.Tensor, c: torch.Tensor, skip: torch.Tensor):  # noqa: ANN201
            logits, state = model.step(tokens, (h, c, skip))
            return (logits, *state)

    batch = torch.export.Dim("batch")
    features = torch.randn(2, 128, 4, 4)
    torch.onnx.export(Start(), (features,), tmp_path / "start.onnx", dynamo=True, dynamic_shapes=[{0: batch}])
    example = (torch.tensor([1, 5]), *model.start(features))
    torch.onnx.export(Step(), example, tmp_path / "step.onnx", dynamo=True, dynamic_shapes=[{0: batch}] * 4)

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
