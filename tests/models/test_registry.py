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
    names = family_names()
    assert {"cnn-lstm", "cnn-lstm-attn", "blip"} <= set(names) and names == sorted(names)
    with pytest.raises(UnknownNameError, match=f"unknown model family 'gpt-4'; choose one of: {', '.join(names)}$"):
        get_family("gpt-4")


def test_engine_names_belong_to_families() -> None:
    spec = get_family("cnn-lstm-attn")
    assert (
        spec.engine_names == ("onnx", "torch", "torch-bf16", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8")
        and spec.default_engine == "onnx"
    )
    assert spec.engine_class("torch").__name__ == "TorchEngine"
    assert all_engine_names() == [
        "int8",
        "onnx",
        "onnx-int8",
        "openvino",
        "openvino-bf16",
        "openvino-int8",
        "torch",
        "torch-bf16",
    ]  # the union: int8 is the VLP families'
    with pytest.raises(UnknownEngineError) as info:
        spec.engine_class("int8")
    assert str(info.value) == (
        "unknown engine 'int8' for model family 'cnn-lstm-attn'; choose one of: "
        "onnx, torch, torch-bf16, onnx-int8, openvino, openvino-bf16, openvino-int8"
    )
    assert isinstance(info.value, UnknownNameError)


def test_all_engine_names_is_the_union_over_families(monkeypatch: pytest.MonkeyPatch) -> None:
    families = dict(registry.FAMILIES)
    families["toy"] = FamilySpec("toy", "nowhere", "x", {"int8x": "nowhere:Int8Engine", "torch": "nowhere:T"})
    monkeypatch.setattr(registry, "FAMILIES", families)
    assert all_engine_names() == sorted({"int8x", *(e for spec in families.values() for e in spec.engines)})
    assert get_family("toy").default_engine == "int8x"
    with pytest.raises(UnknownEngineError, match="choose one of: int8x, torch"):
        get_family("toy").check_engine("onnx")


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
