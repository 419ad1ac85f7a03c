"""``--quantize int8``: static QDQ encoder that runs through the onnx engine and reports its numbers."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from tests.export.tiny_models import fixture_images, save_tiny
from vicap_jobs.data.images import Preprocessing
from vicap_jobs.engines import ModelArtifacts, load_engine
from vicap_jobs.engines.base import CaptionEngine
from vicap_jobs.engines.onnx_format import default_onnx_dir
from vicap_jobs.errors import InputError
from vicap_jobs.export.onnx import export_onnx
from vicap_jobs.export.quantize import INT8_SUBDIR, ImageCalibrationReader, quantize_int8
from vicap_jobs.export.verify import export_and_verify


@pytest.fixture(scope="module")
def calibration_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """16 JPEG files plus one broken file the reader must skip."""
    folder = tmp_path_factory.mktemp("calibration")
    paths = []
    for i, image in enumerate(fixture_images(16, seed=21, size=48)):
        paths.append(folder / f"{i:02d}.jpg")
        image.save(paths[-1], quality=90)
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    return [*paths[:8], broken, *paths[8:]]


def test_export_and_verify_int8_runs_and_reports(tmp_path: Path, calibration_images: list[Path]) -> None:
    checkpoint = save_tiny(tmp_path / "model", "cnn-lstm-attn", trained=True)
    evaluated: list[str] = []

    def fake_bleu(engine: CaptionEngine) -> float:
        evaluated.append(str(engine.export.encoder_path))
        return 0.25

    report = export_and_verify(
        checkpoint,
        default_onnx_dir(checkpoint),
        quantize="int8",
        calibration_images=calibration_images,
        eval_fn=fake_bleu,
    )
    q = report.quantize
    assert q is not None and report.verify.ok
    assert q.int8_dir == default_onnx_dir(checkpoint) / INT8_SUBDIR
    assert q.n_calibration_images == 16 and q.n_speed_images == 16
    assert q.fp32_images_per_s > 0 and q.int8_images_per_s > 0 and q.speedup > 0
    assert q.encoder_int8_mb < q.encoder_fp32_mb
    assert 0.0 <= q.caption_agreement <= 1.0
    assert (q.fp32_bleu_4, q.int8_bleu_4, q.bleu_4_change) == (0.25, 0.25, 0.0)
    assert len(evaluated) == 2 and evaluated[0] != evaluated[1]
    assert "BLEU-4 0.2500 → 0.2500" in report.summary()
    ops = {node.op_type for node in onnx.load(str(q.encoder_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    config = json.loads((q.int8_dir / "onnx_config.json").read_text(encoding="utf-8"))
    assert config["quantization"]["method"] == "onnxruntime static QDQ"
    # Workers open it like any export.
    engine = load_engine("onnx", ModelArtifacts(checkpoint, exports={"onnx": q.int8_dir}))
    assert len(engine.caption(fixture_images(3, seed=1))) == 3


def test_quantize_into_a_chosen_folder(tmp_path: Path, calibration_images: list[Path]) -> None:
    checkpoint = save_tiny(tmp_path / "model", "cnn-lstm")
    export = export_onnx(checkpoint, tmp_path / "onnx")
    report = quantize_int8(
        export.out_dir, calibration_images[:8], out_dir=tmp_path / "int8", speed_images=4, batch_size=4
    )
    assert report.int8_dir == tmp_path / "int8" and report.n_speed_images == 4
    engine = load_engine("onnx", ModelArtifacts(checkpoint, exports={"onnx": report.int8_dir}))
    assert len(engine.caption(fixture_images(2))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8", "model", "onnx"]  # no temporary folders left


def test_calibration_reader_batches_and_skips_broken_files(calibration_images: list[Path]) -> None:
    reader = ImageCalibrationReader(calibration_images, preprocessing=Preprocessing(32), batch_size=8)
    shapes = []
    while (batch := reader.get_next()) is not None:
        shapes.append(batch["pixel_values"].shape)
    assert shapes == [(8, 3, 32, 32), (7, 3, 32, 32), (1, 3, 32, 32)]  # the broken file sat in batch 2
    assert (reader.used, reader.skipped) == (16, 1)


def test_quantize_needs_calibration_images(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="calibration images"):
        quantize_int8(tmp_path, [])
