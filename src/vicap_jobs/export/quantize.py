"""``--quantize int8``: static (QDQ) int8 quantization of the ONNX encoder with onnxruntime.

Static, never dynamic: dynamic int8 quantization of convolutions makes
DenseNet201 3× slower than fp32 onnxruntime on our CPUs, because activations
are re-quantized at run time. Static QDQ fixes activation ranges from
calibration images (a few hundred training images, preprocessed exactly as
the engines do), so onnxruntime can fuse QDQ pairs into int8 kernels (U8 activations,
S8 per-channel weights: the recommended pair on x86 with VNNI).

The decoder (one LSTM step) stays fp32: quantizing its MatMul/Gemm weights
dynamically made DenseNet201-attention captioning 3× slower end to end on
our AMD EPYC (the per-step re-quantization of small activations costs more
than the int8 products save).

Whether int8 pays off depends on the CPU, so the report measures it on the
machine at hand: DenseNet201 attention, batch 8, static int8 encoder vs fp32
onnxruntime was 1.6× faster end to end on the AMD EPYC dev box (1 thread) but
0.98× on a 16-core Xeon with AMX (encoder alone 0.7×, 2 threads).

Output: ``<export>/int8/``, a complete export folder (``encoder_model.onnx``
int8, decoder, the text codec, ``onnx_config.json`` with a ``quantization`` entry)
that the ``onnx`` engine opens like any other (``exports["onnx"] = <export>/int8``).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vicap_jobs.data.images import Preprocessing, load_rgb
from vicap_jobs.engines.base import CaptionEngine, DecodeOptions
from vicap_jobs.engines.onnx_engine import OnnxEngine
from vicap_jobs.engines.onnx_format import CONFIG_FILE, DECODER_FILE, ENCODER_FILE, PIXELS, OnnxExport
from vicap_jobs.errors import ImageError, InputError, VicapError

log = logging.getLogger(__name__)

INT8_SUBDIR = "int8"
MAX_CALIBRATION_IMAGES = 300


class ImageCalibrationReader:
    """onnxruntime CalibrationDataReader: batches of preprocessed images as ``{"pixel_values": (B, 3, S, S)}``.

    Images are decoded lazily, one batch at a time; unreadable files are skipped and counted.
    """

    def __init__(self, paths: Sequence[Path], *, preprocessing: Preprocessing, batch_size: int = 8) -> None:
        self.paths = list(paths)
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.used = 0
        self.skipped = 0
        self._batches = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.paths), self.batch_size):
            images = []
            for path in self.paths[start : start + self.batch_size]:
                try:
                    images.append(load_rgb(path))
                except ImageError as exc:
                    log.warning("calibration image %s skipped: %s", path, exc)
                    self.skipped += 1
            if images:
                self.used += len(images)
                yield {PIXELS: self.preprocessing.apply(images)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when the images are used up (the onnxruntime protocol)."""
        return next(self._batches, None)

    def rewind(self) -> None:
        self.used = self.skipped = 0
        self._batches = self._iterate()


@dataclass(frozen=True)
class QuantizeReport:
    """Where the int8 export is and what it changes: speed on the same images, and quality when measured."""

    int8_dir: Path
    encoder_path: Path
    n_calibration_images: int
    n_speed_images: int
    batch_size: int
    encoder_fp32_images_per_s: float
    encoder_int8_images_per_s: float
    fp32_images_per_s: float  # encoder + beam search, from preprocessed pixels
    int8_images_per_s: float
    caption_agreement: float  # share of the speed images whose int8 caption equals the fp32 one
    encoder_fp32_mb: float
    encoder_int8_mb: float
    fp32_bleu_4: float | None = None
    int8_bleu_4: float | None = None

    @property
    def speedup(self) -> float:
        return self.int8_images_per_s / self.fp32_images_per_s

    @property
    def bleu_4_change(self) -> float | None:
        if self.fp32_bleu_4 is None or self.int8_bleu_4 is None:
            return None
        return self.int8_bleu_4 - self.fp32_bleu_4


def _quantize_encoder(source: Path, target: Path, reader: ImageCalibrationReader, work: Path) -> None:
    """Shape-infer/optimize ``source``, then static QDQ quantization calibrated by ``reader``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "encoder.pre.onnx"
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # pre-processing only helps; quantize the raw graph when it fails
        log.warning("quantization pre-processing failed (%s); quantizing the exported graph as is", exc)
        shutil.copyfile(source, prepared)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # one "Axis 1 is out-of-range" warning per BatchNorm scale vector
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(prepared),
                str(target),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
                calibration_providers=["CPUExecutionProvider"],
                # MinMax calibration keeps only per-batch ReduceMin/ReduceMax outputs, so memory stays small;
                # do not set CalibMaxIntermediateOutputs: onnxruntime 1.32 drops those batches uncounted.
            )
    finally:
        root.setLevel(level)
    prepared.unlink(missing_ok=True)


def _copy(source: Path, target: Path) -> None:
    """Copy a file or a folder (a codec may be either)."""
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)


def images_per_second(run: Callable[[np.ndarray], Any], pixels: np.ndarray, batch_size: int) -> float:
    """Throughput of ``run`` over ``pixels`` in batches of ``batch_size``, after one warm-up batch."""
    run(pixels[:batch_size])
    start = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        run(pixels[i : i + batch_size])
    return len(pixels) / (time.perf_counter() - start)


def _speed_pixels(paths: Sequence[Path], preprocessing: Preprocessing, n: int) -> np.ndarray:
    images: list[Image.Image] = []
    for path in paths:
        if len(images) == n:
            break
        try:
            images.append(load_rgb(path))
        except ImageError:
            continue
    if not images:
        raise InputError("none of the calibration images could be read")
    return preprocessing.apply(images)


def quantize_int8(
    onnx_dir: Path,
    calibration_images: Sequence[Path],
    *,
    out_dir: Path | None = None,
    max_calibration_images: int = MAX_CALIBRATION_IMAGES,
    batch_size: int = 8,
    speed_images: int = 32,
    decode: DecodeOptions | None = None,
    threads: int | None = None,
    eval_fn: Callable[[CaptionEngine], float] | None = None,
) -> QuantizeReport:
    """Build the int8 variant of export ``onnx_dir`` and measure it against fp32.

    Calibrates on up to ``max_calibration_images`` of ``calibration_images``;
    times fp32 vs int8 (encoder alone, and encoder + search) on the first
    ``speed_images`` of them at ``batch_size``; ``eval_fn(engine) -> BLEU-4``
    is called on both engines when given. ``out_dir`` defaults to ``onnx_dir/int8``.
    """
    if not calibration_images:
        raise InputError("int8 quantization needs calibration images (a few hundred training images)")
    export = OnnxExport.read(Path(onnx_dir))
    out_dir = Path(out_dir) if out_dir is not None else export.out_dir / INT8_SUBDIR
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    reader = ImageCalibrationReader(
        list(calibration_images)[:max_calibration_images], preprocessing=export.preprocessing, batch_size=batch_size
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        try:
            _quantize_encoder(export.encoder_path, tmp / ENCODER_FILE, reader, tmp)
            shutil.copyfile(export.decoder_path, tmp / DECODER_FILE)
        except (VicapError, MemoryError):
            raise
        except Exception as exc:  # onnxruntime's quantizer raises plain exceptions of many kinds
            raise VicapError(f"int8 quantization of {export.encoder_path} failed: {type(exc).__name__}: {exc}") from exc
        if reader.used == 0:
            raise InputError(f"none of the {len(reader.paths)} calibration images could be read")
        _copy(export.codec_path, tmp / export.codec_path.name)
        config = json.loads(export.config_path.read_text(encoding="utf-8"))
        config["quantization"] = {
            "method": "onnxruntime static QDQ",
            "activations": "uint8",
            "weights": "int8 per-channel",
            "calibration": "minmax",
            "n_calibration_images": reader.used,
            "decoder": "fp32",
            "source": str(export.out_dir.resolve()),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    int8_export = OnnxExport.read(out_dir)

    pixels = _speed_pixels(calibration_images, export.preprocessing, speed_images)
    fp32 = OnnxEngine(export, decode=decode, threads=threads)
    int8 = OnnxEngine(int8_export, decode=decode, threads=threads)
    fp32_ids, int8_ids = fp32._forward(pixels), int8._forward(pixels)
    return QuantizeReport(
        int8_dir=out_dir,
        encoder_path=int8_export.encoder_path,
        n_calibration_images=reader.used,
        n_speed_images=len(pixels),
        batch_size=batch_size,
        encoder_fp32_images_per_s=images_per_second(fp32.encode, pixels, batch_size),
        encoder_int8_images_per_s=images_per_second(int8.encode, pixels, batch_size),
        fp32_images_per_s=images_per_second(fp32._forward, pixels, batch_size),
        int8_images_per_s=images_per_second(int8._forward, pixels, batch_size),
        caption_agreement=float(np.mean([a == b for a, b in zip(fp32_ids, int8_ids, strict=True)])),
        encoder_fp32_mb=export.encoder_path.stat().st_size / 1e6,
        encoder_int8_mb=int8_export.encoder_path.stat().st_size / 1e6,
        fp32_bleu_4=eval_fn(fp32) if eval_fn else None,
        int8_bleu_4=eval_fn(int8) if eval_fn else None,
    )
