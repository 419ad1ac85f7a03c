"""The engine interface and its loader: codec and preprocessing from the artifacts, family engine names, errors.

Whether every engine of every family agrees with the torch engine is in
tests/models/test_family_contract.py.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.export.tiny_models import FAMILIES, export_all, fixture_images, save_tiny, trained_images
from vicap_jobs.data.images import Preprocessing, preprocess
from vicap_jobs.engines import DecodeOptions, ModelArtifacts, UnknownEngineError, load_engine
from vicap_jobs.engines.onnx_format import default_onnx_dir
from vicap_jobs.errors import InputError, UnknownNameError, VicapError
from vicap_jobs.export.onnx import export_onnx
from vicap_jobs.models.codec import TextCodec


@pytest.fixture(scope="module", params=FAMILIES)
def long_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModelArtifacts:
    """Trained tiny checkpoint that never stops before max_len, exported to ``<checkpoint>/onnx``.

    Training makes captions depend on the image; suppressing <eos> makes every step count.
    """
    checkpoint = save_tiny(
        tmp_path_factory.mktemp(request.param) / "model", request.param, seed=3, trained=True, long=True
    )
    return export_all(checkpoint)


def test_beam_size_one_is_greedy(long_model: ModelArtifacts) -> None:
    from vicap_jobs.models.decoding import beam_search

    images = fixture_images(3, seed=2)
    greedy = load_engine("onnx", long_model, decode=DecodeOptions(beam_size=1, max_len=8))
    pixels = greedy.preprocess(images)
    codec = greedy.codec
    beam_one = beam_search(
        greedy.step_fn,
        greedy.encode(pixels),
        batch_size=3,
        beam_size=1,
        max_len=8,
        bos_id=codec.bos_id,
        eos_id=codec.eos_id,
    )
    assert beam_one == greedy._forward(pixels)


def test_preprocess_is_the_checkpoint_policy_and_postprocess_gives_nfc_text(long_model: ModelArtifacts) -> None:
    engine = load_engine("torch", long_model)
    images = fixture_images(2, seed=4, size=50)
    assert engine.preprocessing == Preprocessing(32)
    np.testing.assert_array_equal(engine.preprocess(images), preprocess(images, 32))
    assert engine.caption([]) == []
    codec = engine.codec
    assert isinstance(codec, TextCodec)
    vocab = engine.checkpoint.codec
    ids = [[vocab.token_id("cầu"), vocab.token_id("thủ"), codec.eos_id, vocab.token_id("sân")]]
    assert engine.postprocess(ids) == ["cầu thủ"]
    assert unicodedata.is_normalized("NFC", engine.postprocess([[5, 6, 7]])[0])


def test_the_search_bans_the_codec_ids(long_model: ModelArtifacts, monkeypatch: pytest.MonkeyPatch) -> None:
    """Search asks the codec, not the project's constants, which ids never to emit and where to start/stop."""
    engine = load_engine("torch", long_model, decode=DecodeOptions(beam_size=1, max_len=6))
    pixels = engine.preprocess(trained_images())
    before = engine._forward(pixels)
    banned = tuple(sorted({ids[0] for ids in before}))  # every first token the model chose
    monkeypatch.setattr(type(engine.codec), "banned_ids", (*engine.codec.banned_ids, *banned))
    after = engine._forward(pixels)
    assert all(ids[0] not in banned for ids in after)


def test_unknown_engine_lists_the_family_engines(long_model: ModelArtifacts) -> None:
    with pytest.raises(UnknownNameError) as info:
        load_engine("tensorrt", long_model)
    message = str(info.value)
    assert message.startswith("unknown engine 'tensorrt' for model family 'cnn-lstm")
    assert message.endswith("choose one of: onnx, torch, torch-bf16, onnx-int8, openvino, openvino-bf16, openvino-int8")
    with pytest.raises(UnknownEngineError, match="unknown engine .int8."):  # the vision-language families' engine
        load_engine("int8", long_model)


def test_onnx_engine_without_export_says_how_to_export(tmp_path: Path) -> None:
    checkpoint = save_tiny(tmp_path / "model", "cnn-lstm")
    with pytest.raises(VicapError, match=r"run `vicap-jobs export onnx MODEL`"):
        load_engine("onnx", ModelArtifacts(checkpoint))


def test_onnx_engine_opens_the_export_folder_given(long_model: ModelArtifacts, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    export_onnx(long_model.checkpoint_dir, moved)
    engine = load_engine("onnx", ModelArtifacts(long_model.checkpoint_dir, exports={"onnx": moved}))
    assert engine.export.out_dir == moved and engine.preprocessing == Preprocessing(32)
    assert load_engine("onnx", long_model).export.out_dir == default_onnx_dir(long_model.checkpoint_dir)


def test_onnx_engine_refuses_an_export_of_other_weights(long_model: ModelArtifacts, tmp_path: Path) -> None:
    other = save_tiny(tmp_path / "other", "cnn-lstm", seed=99)
    with pytest.raises(VicapError, match="other weights"):
        load_engine("onnx", ModelArtifacts(other, exports={"onnx": long_model.export_dir("onnx")}))


def test_bad_options_are_input_errors(long_model: ModelArtifacts) -> None:
    with pytest.raises(InputError):
        DecodeOptions(beam_size=0)
    with pytest.raises(InputError, match="unknown device 'tpu'; use cpu, cuda or cuda:N"):
        load_engine("torch", long_model, device="tpu")
    with pytest.raises(InputError, match="unknown device"):
        load_engine("onnx", long_model, device="cuda:x")
    with pytest.raises(InputError):
        load_engine("onnx", long_model, threads=0)


@pytest.fixture(scope="module", params=FAMILIES)
def trained_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModelArtifacts:
    """Tiny checkpoint overfitted on ``trained_images()`` (clear logit margins, like a real model)."""
    return ModelArtifacts(save_tiny(tmp_path_factory.mktemp(request.param) / "trained", request.param, trained=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["torch", "torch-bf16"])
def test_cuda_engines_agree_with_cpu(trained_model: ModelArtifacts, name: str) -> None:
    images = trained_images() + fixture_images(4, seed=5)
    on_gpu = load_engine(name, trained_model, device="cuda").caption(images)
    assert on_gpu == load_engine("torch", trained_model).caption(images)


@pytest.mark.gpu
def test_onnx_cuda_provider_agrees_with_cpu(long_model: ModelArtifacts) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    images = trained_images() + fixture_images(3, seed=11)
    gpu = load_engine("onnx", long_model, device="cuda:0")
    assert gpu.encoder.get_providers()[0] == "CUDAExecutionProvider"
    assert gpu.caption(images) == load_engine("onnx", long_model).caption(images)


def test_cuda_device_without_gpu_is_a_clear_error(long_model: ModelArtifacts) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(VicapError, match="onnxruntime-gpu"):
        load_engine("onnx", long_model, device="cuda")
