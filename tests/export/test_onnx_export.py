"""ONNX export of every family that lists it: names, dynamic batch, parity with torch, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.export.tiny_models import ONNX_FAMILIES, fixture_images, save_tiny
from vicap_jobs.engines import DecodeOptions, ModelArtifacts, load_engine
from vicap_jobs.engines.onnx_engine import OnnxDecoderStep, OnnxEngine
from vicap_jobs.engines.onnx_format import OnnxExport, default_onnx_dir
from vicap_jobs.errors import InputError, NotFoundError, UnknownNameError, VicapError
from vicap_jobs.export import onnx as onnx_export
from vicap_jobs.export.onnx import EXAMPLE_BATCH, export_onnx
from vicap_jobs.export.verify import LOGITS_ATOL, export_and_verify, fixture_pixels, verify_export
from vicap_jobs.models.checkpoint import load_checkpoint


@pytest.fixture(scope="module", params=ONNX_FAMILIES)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OnnxExport]:
    """A random tiny checkpoint that writes max_len-token captions, and its export in the default folder."""
    checkpoint = save_tiny(tmp_path_factory.mktemp(request.param) / "model", request.param, seed=1, long=True)
    return checkpoint, export_onnx(checkpoint, default_onnx_dir(checkpoint))


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]


def test_export_writes_optimum_names_and_config(exported: tuple[Path, OnnxExport]) -> None:
    checkpoint, export = exported
    assert export.out_dir == checkpoint / "onnx"
    assert sorted(p.name for p in export.out_dir.iterdir()) == [
        "decoder_model.onnx",
        "encoder_model.onnx",
        "onnx_config.json",
        "vocab.json",
    ]
    encoder = onnx.load(str(export.encoder_path)).graph
    decoder = onnx.load(str(export.decoder_path)).graph
    n_state = len(export.state_names)
    assert [v.name for v in encoder.input] == ["pixel_values"]
    assert [v.name for v in encoder.output] == [f"state_{i}" for i in range(n_state)]
    assert [v.name for v in decoder.input] == ["input_ids", *export.state_names]
    changing = [i for i in range(n_state) if i not in export.passthrough_states]
    assert [v.name for v in decoder.output] == ["logits", *(f"next_state_{i}" for i in changing)]
    # Show-and-Tell passes its image skip vector through; Show-Attend-Tell its memory and keys.
    assert export.passthrough_states == ((2,) if export.family == "cnn-lstm" else (0, 1))
    for value in [*encoder.input, *encoder.output, *decoder.input, *decoder.output]:
        assert isinstance(_dims(value)[0], str), f"{value.name} has a fixed batch axis: {_dims(value)}"
    config = json.loads(export.config_path.read_text(encoding="utf-8"))
    assert config["image_size"] == 32 and config["tokenization"] == "syllable"
    assert config["checkpoint"]["path"] == str(checkpoint.resolve())
    assert config["codec"] == {"kind": "vocab", "file": "vocab.json"} and config["vocab_file"] == "vocab.json"
    assert config["preprocessing"]["size"] == 32 and config["preprocessing"]["resize"] == "squash"
    assert (config["bos_id"], config["eos_id"], config["pad_id"]) == (1, 2, 0)


def test_exports_written_before_codec_and_preprocessing_still_open(
    exported: tuple[Path, OnnxExport], tmp_path: Path
) -> None:
    checkpoint, export = exported
    old = tmp_path / "old"
    shutil.copytree(export.out_dir, old)
    config = json.loads((old / "onnx_config.json").read_text(encoding="utf-8"))
    del config["codec"], config["preprocessing"]
    (old / "onnx_config.json").write_text(json.dumps(config), encoding="utf-8")
    reread = OnnxExport.read(old)
    assert reread.preprocessing == export.preprocessing and reread.codec_path == old / "vocab.json"
    images = fixture_images(2, seed=3)
    opened = load_engine("onnx", ModelArtifacts(checkpoint, exports={"onnx": old}))
    assert opened.caption(images) == load_engine("onnx", ModelArtifacts(checkpoint)).caption(images)


def test_parity_with_torch_on_a_batch_not_traced(exported: tuple[Path, OnnxExport]) -> None:
    checkpoint, export = exported
    assert EXAMPLE_BATCH == 2
    report = verify_export(checkpoint, export.out_dir, n_images=3, steps=6)
    assert report.ok and report.captions_identical
    assert report.max_abs_diff_logits <= 1e-4 and report.max_abs_diff_state <= 1e-4
    assert report.torch_captions == report.onnx_captions
    assert all(len(caption.split()) >= 10 for caption in report.torch_captions)  # many decoding steps compared


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_graphs_run_any_batch_size_with_the_torch_numbers(exported: tuple[Path, OnnxExport], batch: int) -> None:
    """The traced batch is 2: encoder and decoder step give torch's start/step at other batch sizes too."""
    checkpoint, export = exported
    engine = OnnxEngine(export)
    model = load_checkpoint(checkpoint).model
    pixels = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    tokens = torch.arange(batch, dtype=torch.long) + 4
    state = engine.encode(pixels)
    logits, new_state = engine.step_fn(tokens, state)
    with torch.no_grad():
        expected_state = model.start(model.extract_features(torch.from_numpy(pixels)))
        expected_logits, expected_next = model.step(tokens, expected_state)
    assert logits.shape == (batch, len(engine.codec)) and len(new_state) == len(state)
    for got, want in zip([*state, logits, *new_state], [*expected_state, expected_logits, *expected_next], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_verify_refuses_an_export_of_other_weights(exported: tuple[Path, OnnxExport], tmp_path: Path) -> None:
    _, export = exported
    other = save_tiny(tmp_path / "other", export.family, seed=7)
    with pytest.raises(VicapError, match="not made from checkpoint"):
        verify_export(other, export.out_dir)


def test_verify_reports_numbers_on_mismatch(exported: tuple[Path, OnnxExport], monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint, export = exported
    real_call = OnnxDecoderStep.__call__

    def skewed(self: OnnxDecoderStep, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):  # noqa: ANN202
        logits, new_state = real_call(self, tokens, state)
        return logits + 1e-3, new_state

    monkeypatch.setattr(OnnxDecoderStep, "__call__", skewed)
    with pytest.raises(VicapError, match=r"max abs diff logits 0\.001"):
        verify_export(checkpoint, export.out_dir, n_images=2, steps=2)


@pytest.mark.parametrize("skew", [1e-3, 2 * LOGITS_ATOL])  # 2x the tolerance: caught, not just gross errors
def test_verify_fails_on_a_skewed_initial_state(
    exported: tuple[Path, OnnxExport], monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """An encoder whose state is off (its logits are compared only from each side's own state) must fail."""
    checkpoint, export = exported
    real_encode = OnnxEngine.encode

    def skewed(self: OnnxEngine, pixels: np.ndarray) -> tuple[torch.Tensor, ...]:
        first, *rest = real_encode(self, pixels)
        return (first + skew, *rest)

    monkeypatch.setattr(OnnxEngine, "encode", skewed)
    with pytest.raises(VicapError, match=rf"initial state {skew:.3g} \(allowed {LOGITS_ATOL:g}\)"):
        verify_export(checkpoint, export.out_dir, n_images=2, steps=1)


def test_failed_export_leaves_old_folder_and_no_debris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = save_tiny(tmp_path / "model", "cnn-lstm")
    out = tmp_path / "export"
    out.mkdir()
    (out / "marker").write_text("old export")
    real = onnx_export._export_graph

    def fail_on_decoder(module, args, path: Path, **kwargs) -> None:  # noqa: ANN001
        if path.name == onnx_export.DECODER_FILE:
            raise VicapError("simulated crash while exporting the decoder")
        real(module, args, path, **kwargs)

    monkeypatch.setattr(onnx_export, "_export_graph", fail_on_decoder)
    with pytest.raises(VicapError, match="simulated crash"):
        export_onnx(checkpoint, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "model"]
    assert (out / "marker").read_text() == "old export"


def test_missing_or_broken_export_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="vicap-jobs export onnx"):
        OnnxExport.read(tmp_path)
    (tmp_path / "onnx_config.json").write_text("{not json")
    with pytest.raises(InputError, match="onnx_config.json"):
        OnnxExport.read(tmp_path)


def test_export_and_verify_checks_options_before_exporting(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="int8"):
        export_and_verify(tmp_path / "missing", tmp_path / "out", quantize="int4")
    with pytest.raises(InputError, match="calibration images"):
        export_and_verify(tmp_path / "missing", tmp_path / "out", quantize="int8")
    assert not (tmp_path / "out").exists()


def test_export_and_verify_report(tmp_path: Path) -> None:
    checkpoint = save_tiny(tmp_path / "model", "cnn-lstm-attn", long=True)
    report = export_and_verify(checkpoint, tmp_path / "exported")
    verify = report.verify
    assert report.export.out_dir == tmp_path / "exported" and report.quantize is None
    assert verify.n_images == EXAMPLE_BATCH + 2 and verify.steps == 5  # not the traced batch: the dynamic axis
    assert 0 <= verify.max_abs_diff_logits <= verify.atol == LOGITS_ATOL and verify.max_abs_diff_state <= verify.atol
    assert verify.torch_captions == verify.onnx_captions and len(verify.torch_captions) == verify.n_images
    assert all(len(caption.split()) >= 10 for caption in verify.torch_captions)  # long: many steps compared
    assert report.summary() == (
        f"exported cnn-lstm-attn to {tmp_path / 'exported'}; torch parity on 4 images: "
        f"max abs diff logits {verify.max_abs_diff_logits:.1e}, greedy captions identical"
    )
    # what was verified is what workers open: the same greedy captions on the same fixture images
    artifacts = ModelArtifacts(checkpoint, exports={"onnx": report.export.out_dir})
    engine = load_engine("onnx", artifacts, decode=DecodeOptions(beam_size=1))
    pixels = fixture_pixels(verify.n_images, seed=0, engine=engine)
    assert tuple(engine.postprocess(engine._forward(pixels))) == verify.onnx_captions
