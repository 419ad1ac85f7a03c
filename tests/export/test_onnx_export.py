"""ONNX export of both CNN+LSTM families: names, dynamic batch, parity with torch, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.export.tiny_models import FAMILIES, save_tiny
from vicap_jobs.errors import InputError, NotFoundError, UnknownNameError, VicapError
from vicap_jobs.export import onnx as onnx_export
from vicap_jobs.export.onnx import EXAMPLE_BATCH, OnnxExport, default_onnx_dir, export_onnx
from vicap_jobs.export.verify import export_and_verify, verify_export


@pytest.fixture(scope="module", params=FAMILIES)
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


def test_parity_with_torch_on_a_batch_not_traced(exported: tuple[Path, OnnxExport]) -> None:
    checkpoint, export = exported
    assert EXAMPLE_BATCH == 2
    report = verify_export(checkpoint, export.out_dir, n_images=3, steps=6)
    assert report.ok and report.captions_identical
    assert report.max_abs_diff_logits <= 1e-4 and report.max_abs_diff_state <= 1e-4
    assert report.torch_captions == report.onnx_captions
    assert all(len(caption.split()) >= 10 for caption in report.torch_captions)  # many decoding steps compared


@pytest.mark.parametrize("batch", [1, 5])
def test_encoder_runs_any_batch_size(exported: tuple[Path, OnnxExport], batch: int) -> None:
    from vicap_jobs.engines.onnx_engine import OnnxEngine

    _, export = exported
    engine = OnnxEngine(export)
    state = engine.encode(np.zeros((batch, 3, 32, 32), np.float32))
    assert all(part.shape[0] == batch for part in state)
    logits, new_state = engine.step_fn(torch.ones(batch, dtype=torch.long), state)
    assert logits.shape == (batch, len(engine.vocab)) and len(new_state) == len(state)


def test_verify_refuses_an_export_of_other_weights(exported: tuple[Path, OnnxExport], tmp_path: Path) -> None:
    _, export = exported
    other = save_tiny(tmp_path / "other", export.family, seed=7)
    with pytest.raises(VicapError, match="not made from checkpoint"):
        verify_export(other, export.out_dir)


def test_verify_reports_numbers_on_mismatch(exported: tuple[Path, OnnxExport], monkeypatch: pytest.MonkeyPatch) -> None:
    from vicap_jobs.engines.onnx_engine import OnnxDecoderStep

    checkpoint, export = exported
    real_call = OnnxDecoderStep.__call__

    def skewed(self: OnnxDecoderStep, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):  # noqa: ANN202
        logits, new_state = real_call(self, tokens, state)
        return logits + 1e-3, new_state

    monkeypatch.setattr(OnnxDecoderStep, "__call__", skewed)
    with pytest.raises(VicapError, match=r"max abs diff logits 0\.001"):
        verify_export(checkpoint, export.out_dir, n_images=2, steps=2)


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
    report = onnx_export.export_and_verify(checkpoint, tmp_path / "exported")  # the alias services use
    assert report.export.encoder_path.is_file() and report.quantize is None
    assert report.verify.ok and report.verify.n_images != EXAMPLE_BATCH
    assert "greedy captions identical" in report.summary()
