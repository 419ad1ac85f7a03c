"""The ``int8`` engine: every path generates, agrees with fp32, really holds int8 weights, and stays quiet.

Agreement (``int8_checks.check_int8_agrees``): on the trained colour fixture every CPU
int8 path gives fp32's greedy ids, with logits along fp32's path within 2 % of the
fp32 logits' spread (measured: ≤ 0.3 %); a caption may differ only at a near-tie of
fp32 itself, and here at most one of the eight does.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.engines.int8_checks import check_int8_agrees
from vicap_jobs.engines import DecodeOptions, ModelArtifacts, int8_engine, load_engine
from vicap_jobs.engines.int8_engine import (
    DEFAULT_PATHS,
    INT8_PATHS,
    Int8Engine,
    bnb_load_options,
    is_int8_weight,
    quantize_torchao,
    resolve_path,
)
from vicap_jobs.errors import InputError, UnknownNameError

CPU_PATHS = [name for name, path in INT8_PATHS.items() if "cpu" in path.devices]
GREEDY = DecodeOptions(beam_size=1, max_len=8)


@pytest.fixture(scope="module")
def fp32(blip_trained: ModelArtifacts) -> Any:
    return load_engine("torch", blip_trained, decode=GREEDY)


@pytest.mark.parametrize("path", CPU_PATHS)
def test_every_cpu_path_generates_the_fp32_tokens(
    path: str, blip_trained: ModelArtifacts, colour_images: list, fp32: Any
) -> None:
    engine = Int8Engine.load(blip_trained, path=path, decode=GREEDY)
    assert engine.int8_path.name == path and engine.precision == "int8"
    pixels = engine.preprocess(colour_images)
    assert check_int8_agrees(engine, fp32, pixels) >= len(colour_images) - 1
    assert len({tuple(ids) for ids in engine._forward(pixels)}) > 1  # captions depend on the image
    assert all(engine.caption(colour_images))


@pytest.mark.parametrize("path", CPU_PATHS)
def test_linears_really_hold_int8(path: str, blip_trained: ModelArtifacts) -> None:
    engine = Int8Engine.load(blip_trained, path=path)
    linears = {name: m for name, m in engine.model.named_modules() if isinstance(m, nn.Linear)}
    quantized = set(engine.quantized)
    assert quantized and quantized <= set(linears)
    assert len(quantized) >= len(linears) - 2  # everything but the language-model head (and tiny layers)
    for name in quantized:
        weight = linears[name].weight
        if INT8_PATHS[path].backend == "torchao":
            assert type(weight).__name__ == "Int8Tensor" and weight.qdata.dtype == torch.int8, name
        else:
            assert type(linears[name]).__name__ == "Linear8bitLt" and weight.dtype == torch.int8, name
    for name in set(linears) - quantized:  # what stays fp32 is plainly fp32
        assert not is_int8_weight(linears[name].weight)


def test_the_output_layer_stays_fp32_unless_asked(
    blip_trained: ModelArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Int8Engine.load(blip_trained, path="torchao-dynamic")
    head = engine.model.hf.text_decoder.get_output_embeddings()
    assert type(head.weight) is nn.Parameter and head.weight.dtype == torch.float32
    monkeypatch.setattr(int8_engine, "QUANTIZE_OUTPUT_LAYERS", True)
    with_head = Int8Engine.load(blip_trained, path="torchao-dynamic")
    assert is_int8_weight(with_head.model.hf.text_decoder.get_output_embeddings().weight)
    assert len(with_head.quantized) == len(engine.quantized) + 1


def test_the_default_path_is_the_devices(blip_trained: ModelArtifacts) -> None:
    assert load_engine("int8", blip_trained).int8_path.name == DEFAULT_PATHS["cpu"]
    assert resolve_path(None, "cuda:1").name == DEFAULT_PATHS["cuda"] == "bnb-cuda"
    with pytest.raises(UnknownNameError, match="unknown int8 path 'int4'; choose one of: bnb-cpu, bnb-cuda"):
        resolve_path("int4", "cpu")
    with pytest.raises(InputError, match="runs on cuda, not on 'cpu'"):
        resolve_path("bnb-cuda", "cpu")
    with pytest.raises(InputError, match="runs on cpu, not on 'cuda'"):
        resolve_path("bnb-cpu", "cuda")


def test_tiny_linears_are_skipped_and_a_model_without_any_is_refused(
    blip_trained: ModelArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = nn.Sequential(nn.Linear(1, 4), nn.Linear(4, 32), nn.Linear(32, 32), nn.Linear(32, 8))
    assert quantize_torchao(model, INT8_PATHS["torchao-dynamic"]) == ["2"]  # torchao fails on the first
    assert model(torch.randn(3, 1)).shape == (3, 8)
    monkeypatch.setattr(int8_engine, "MIN_FEATURES", 10_000)
    with pytest.raises(InputError, match="found no linear layer to quantize in model family 'blip'") as info:
        Int8Engine.load(blip_trained, path="torchao-weight-only")
    assert "\n" not in str(info.value)


def test_bitsandbytes_paths_load_8bit_fp16_on_the_device(
    blip_trained: ModelArtifacts, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = bnb_load_options("cuda:1")
    assert options["quantization_config"].load_in_8bit and options["device_map"] == {"": "cuda:1"}
    assert options["dtype"] == torch.float16
    calls: list[dict[str, Any]] = []

    def fake_load_checkpoint(path: Path, **kwargs: Any) -> Any:
        calls.append({"path": path, **kwargs})
        raise RuntimeError("stop here")

    monkeypatch.setattr(int8_engine, "load_checkpoint", fake_load_checkpoint)
    with pytest.raises(RuntimeError, match="stop here"):
        Int8Engine.load(blip_trained, device="cuda:0", path=None)  # CUDA's default: bitsandbytes
    (call,) = calls
    assert call["path"] == blip_trained.checkpoint_dir and call["map_location"] == "cuda:0"
    assert call["load_options"]["quantization_config"].load_in_8bit
    assert call["load_options"]["device_map"] == {"": "cuda:0"}


def test_bitsandbytes_models_keep_their_device(blip_trained: ModelArtifacts, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Int8Engine.load(blip_trained, path="bnb-cpu")
    assert engine.model.keeps_device is True
    moved: list[Any] = []
    monkeypatch.setattr(nn.Module, "to", lambda self, *a, **k: moved.append(a) or self)
    Int8Engine(engine.checkpoint, path="bnb-cpu")  # TorchEngine must not .to() it again
    assert moved == []
    loaded = engine.checkpoint
    loaded.model.keeps_device = False
    with pytest.raises(InputError, match="quantizes while loading: use Int8Engine.load"):
        Int8Engine(loaded, path="bnb-cpu")


@pytest.mark.parametrize("path", CPU_PATHS)
def test_cpu_paths_warn_nothing_per_call(
    path: str, blip_trained: ModelArtifacts, colour_images: list, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Int8Engine.load(blip_trained, path=path, decode=GREEDY)
    engine.caption(colour_images[:2])
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        engine.caption(colour_images[:2])
        engine.caption(colour_images[2:4])
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_bitsandbytes_on_cuda_generates_the_fp32_tokens(
    blip_trained: ModelArtifacts, colour_images: list, fp32: Any
) -> None:
    engine = load_engine("int8", blip_trained, device="cuda", decode=GREEDY)
    assert engine.int8_path.name == "bnb-cuda" and engine.quantized
    assert next(p for p in engine.model.parameters() if p.dtype == torch.int8).device.type == "cuda"
    assert engine.caption(colour_images) == fp32.caption(colour_images)
