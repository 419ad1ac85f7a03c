"""The family registry: names without torch, engines per family, lazy family modules and trainers."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from vicap_jobs.errors import InputError, UnknownNameError
from vicap_jobs.models import registry
from vicap_jobs.models.registry import FamilySpec, UnknownEngineError, all_engine_names, family_names, get_family


def test_names_and_unknown_family_lists_the_valid_ones() -> None:
    assert family_names() == ["cnn-lstm", "cnn-lstm-attn"]
    with pytest.raises(UnknownNameError, match="unknown model family 'blip'; choose one of: cnn-lstm, cnn-lstm-attn"):
        get_family("blip")


def test_engine_names_belong_to_families() -> None:
    spec = get_family("cnn-lstm-attn")
    assert spec.engine_names == ("onnx", "torch", "torch-bf16") and spec.default_engine == "onnx"
    assert spec.engine_class("torch").__name__ == "TorchEngine"
    assert all_engine_names() == ["onnx", "torch", "torch-bf16"]
    assert "int8" not in all_engine_names()  # no global placeholder: a family without an int8 engine lists none
    with pytest.raises(UnknownEngineError) as info:
        spec.engine_class("int8")
    assert str(info.value) == (
        "unknown engine 'int8' for model family 'cnn-lstm-attn'; choose one of: onnx, torch, torch-bf16"
    )
    assert isinstance(info.value, UnknownNameError)


def test_all_engine_names_is_the_union_over_families(monkeypatch: pytest.MonkeyPatch) -> None:
    families = dict(registry.FAMILIES)
    families["blip"] = FamilySpec("blip", "nowhere", "x", {"int8": "nowhere:Int8Engine", "torch": "nowhere:T"})
    monkeypatch.setattr(registry, "FAMILIES", families)
    assert all_engine_names() == ["int8", "onnx", "torch", "torch-bf16"]
    assert get_family("blip").default_engine == "int8"
    with pytest.raises(UnknownEngineError, match="choose one of: int8, torch"):
        get_family("blip").check_engine("onnx")


def test_listing_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from vicap_jobs.models.registry import all_engine_names, family_names, get_family\n"
        "from vicap_jobs.engines import DecodeOptions, ModelArtifacts, load_engine\n"
        "spec = get_family('cnn-lstm'); spec.check_engine('onnx')\n"
        "print(family_names(), all_engine_names(), spec.engine_names, spec.exports, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("('onnx',) False")


def test_train_resolves_the_trainer_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []
    fake = types.ModuleType("vicap_jobs.training.lstm")
    fake.train_lstm = lambda **kwargs: calls.append(kwargs) or "result"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vicap_jobs.training.lstm", fake)
    assert get_family("cnn-lstm").train(epochs=1) == "result"
    assert calls == [{"family": "cnn-lstm", "epochs": 1}]


def test_bad_registry_lines_fail_clearly() -> None:
    with pytest.raises(InputError, match="lists no engine"):
        FamilySpec("empty", "nowhere", "x", {})
    with pytest.raises(InputError, match="module:attribute"):
        registry.resolve("no-colon")
    with pytest.raises(InputError, match="cannot be trained"):
        FamilySpec("untrained", "nowhere", "x", {"torch": "a:b"}).train()
    with pytest.raises(InputError, match="does not define FAMILY"):
        _ = FamilySpec("bare", "vicap_jobs.models.lstm_common", "x", {"torch": "a:b"}).model
