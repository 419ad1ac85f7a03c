"""Engines behind one interface: torch, torch-bf16 and onnx give the same captions; clear errors."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.export.tiny_models import CAPTIONS, FAMILIES, fixture_images, save_tiny, trained_images
from vicap_jobs.data.images import preprocess
from vicap_jobs.engines import ENGINES, UnknownEngineError, load_engine
from vicap_jobs.engines.base import DecodeOptions
from vicap_jobs.errors import InputError, UnknownNameError, VicapError
from vicap_jobs.export.onnx import default_onnx_dir, export_onnx


@pytest.fixture(scope="module", params=FAMILIES)
def long_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained tiny checkpoint that never stops before max_len, exported to ``<checkpoint>/onnx``.

    Training makes captions depend on the image; suppressing <eos> makes every step count.
    """
    checkpoint = save_tiny(
        tmp_path_factory.mktemp(request.param) / "model", request.param, seed=3, trained=True, long=True
    )
    export_onnx(checkpoint, default_onnx_dir(checkpoint))
    return checkpoint


@pytest.fixture(scope="module", params=FAMILIES)
def trained_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny checkpoint overfitted on ``trained_images()`` (clear logit margins, like a real model)."""
    return save_tiny(tmp_path_factory.mktemp(request.param) / "trained", request.param, trained=True)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_torch_and_onnx_give_identical_captions(long_model: Path, beam_size: int) -> None:
    decode = DecodeOptions(beam_size=beam_size, max_len=12)
    images = trained_images() + fixture_images(3, seed=11)
    torch_captions = load_engine("torch", long_model, decode=decode).caption(images)
    onnx_engine = load_engine("onnx", long_model, decode=decode, threads=1)
    assert onnx_engine.caption(images) == torch_captions
    assert all(len(caption.split()) == 12 for caption in torch_captions)  # every step compared
    assert len(set(torch_captions)) > 1


def test_beam_size_one_is_greedy(long_model: Path) -> None:
    images = fixture_images(3, seed=2)
    greedy = load_engine("onnx", long_model, decode=DecodeOptions(beam_size=1, max_len=8))
    pixels = greedy.preprocess(images)
    from vicap_jobs.data.vocab import BOS_ID, EOS_ID
    from vicap_jobs.models.decoding import beam_search

    beam_one = beam_search(
        greedy.step_fn, greedy.encode(pixels), batch_size=3, beam_size=1, max_len=8, bos_id=BOS_ID, eos_id=EOS_ID
    )
    assert beam_one == greedy._forward(pixels)


def test_trained_model_captions_agree_across_all_engines(trained_model: Path) -> None:
    export_onnx(trained_model, default_onnx_dir(trained_model))
    images = trained_images() + fixture_images(4, seed=5)
    captions = {name: load_engine(name, trained_model).caption(images) for name in ENGINES}
    assert captions["torch"][:4] == list(CAPTIONS)  # the fixture really is trained
    assert captions["torch-bf16"] == captions["torch"]
    assert captions["onnx"] == captions["torch"]


def test_bf16_backbone_tolerance_on_a_random_model(long_model: Path) -> None:
    """Documents the bf16 error honestly: features within ~1-2% of fp32 (relative, max over the grid).

    Captions of an untrained model (near-uniform logits) may differ under bf16;
    the trained-model test above is the one that must agree.
    """
    fp32 = load_engine("torch", long_model)
    bf16 = load_engine("torch-bf16", long_model)
    pixels = torch.from_numpy(fp32.preprocess(fixture_images(4, seed=9)))
    with torch.inference_mode():
        reference, approx = fp32.features(pixels), bf16.features(pixels)
    assert approx.dtype == torch.float32 and approx.shape == reference.shape
    relative = float((approx - reference).abs().max() / reference.abs().max())
    assert relative < 0.05, relative


def test_preprocess_is_the_shared_one_and_postprocess_gives_nfc_text(long_model: Path) -> None:
    engine = load_engine("torch", long_model)
    images = fixture_images(2, seed=4, size=50)
    np.testing.assert_array_equal(engine.preprocess(images), preprocess(images, 32))
    assert engine.caption([]) == []
    vocab = engine.vocab
    ids = [[vocab.token_id("cầu"), vocab.token_id("thủ"), 2, vocab.token_id("sân")]]
    assert engine.postprocess(ids) == ["cầu thủ"]
    assert unicodedata.is_normalized("NFC", engine.postprocess([[5, 6, 7]])[0])


def test_unknown_engine_lists_valid_names_and_reserves_int8(long_model: Path) -> None:
    with pytest.raises(UnknownNameError) as info:
        load_engine("tensorrt", long_model)
    message = str(info.value)
    assert "onnx, torch, torch-bf16" in message and "'int8' is reserved" in message and "BLIP" in message
    with pytest.raises(UnknownEngineError, match="unknown engine 'int8'"):
        load_engine("int8", long_model)


def test_onnx_engine_without_export_says_how_to_export(tmp_path: Path) -> None:
    checkpoint = save_tiny(tmp_path / "model", "cnn-lstm")
    with pytest.raises(VicapError, match=r"run `vicap-jobs export onnx MODEL`"):
        load_engine("onnx", checkpoint)


def test_onnx_engine_refuses_an_export_of_other_weights(long_model: Path, tmp_path: Path) -> None:
    other = save_tiny(tmp_path / "other", "cnn-lstm", seed=99)
    with pytest.raises(VicapError, match="other weights"):
        load_engine("onnx", other, onnx_dir=default_onnx_dir(long_model))


def test_bad_options_are_input_errors(long_model: Path) -> None:
    with pytest.raises(InputError):
        DecodeOptions(beam_size=0)
    with pytest.raises(InputError):
        load_engine("torch", long_model, device="tpu")
    with pytest.raises(InputError):
        load_engine("onnx", long_model, threads=0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["torch", "torch-bf16"])
def test_cuda_engines_agree_with_cpu(trained_model: Path, name: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    images = trained_images() + fixture_images(4, seed=5)
    assert load_engine(name, trained_model, device="cuda").caption(images) == load_engine(
        "torch", trained_model
    ).caption(images)


@pytest.mark.gpu
def test_onnx_cuda_provider_agrees_with_cpu(long_model: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    images = trained_images() + fixture_images(3, seed=11)
    gpu = load_engine("onnx", long_model, device="cuda:0")
    assert gpu.encoder.get_providers()[0] == "CUDAExecutionProvider"
    assert gpu.caption(images) == load_engine("onnx", long_model).caption(images)


def test_cuda_device_without_gpu_is_a_clear_error(long_model: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(VicapError, match="onnxruntime-gpu"):
        load_engine("onnx", long_model, device="cuda")
