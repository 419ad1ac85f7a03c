"""Parity of an ONNX export with its checkpoint, and the one call the CLI makes (:func:`export_and_verify`).

The same fixture batch (seeded noise images, preprocessed exactly as the
engines do) goes through torch and onnxruntime: the initial states and the
logits of several teacher-forced steps must agree within ``atol`` (each side
carries its own state, so errors accumulate as they would in decoding), and
greedy captions must be identical. The batch size differs from the one the
export was traced with, so the dynamic batch axis is exercised too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vicap_jobs.engines.base import CaptionEngine, DecodeOptions
from vicap_jobs.engines.onnx_engine import OnnxEngine
from vicap_jobs.engines.onnx_format import OnnxExport
from vicap_jobs.engines.torch_engine import TorchEngine
from vicap_jobs.errors import InputError, UnknownNameError, VicapError
from vicap_jobs.export import QUANTIZATIONS
from vicap_jobs.export.onnx import EXAMPLE_BATCH, export_onnx
from vicap_jobs.export.quantize import QuantizeReport, quantize_int8
from vicap_jobs.models.checkpoint import load_checkpoint
from vicap_jobs.models.manifest import weights_sha256

LOGITS_ATOL = 1e-4
EvalFn = Callable[[CaptionEngine], float]


@dataclass(frozen=True)
class VerifyReport:
    """Torch vs onnxruntime on one fixture batch."""

    n_images: int
    steps: int
    max_abs_diff_state: float
    max_abs_diff_logits: float
    captions_identical: bool
    atol: float
    torch_captions: tuple[str, ...]
    onnx_captions: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return (
            self.captions_identical and self.max_abs_diff_logits <= self.atol and self.max_abs_diff_state <= self.atol
        )


@dataclass(frozen=True)
class ExportReport:
    """What ``vicap-jobs export onnx`` prints: paths, parity numbers and, with --quantize, int8 numbers."""

    export: OnnxExport
    verify: VerifyReport
    quantize: QuantizeReport | None = None

    def summary(self) -> str:
        """One line for job messages and the CLI."""
        text = (
            f"exported {self.export.family} to {self.export.out_dir}; torch parity on {self.verify.n_images} images: "
            f"max abs diff logits {self.verify.max_abs_diff_logits:.1e}, greedy captions identical"
        )
        q = self.quantize
        if q is not None:
            text += (
                f"; int8 in {q.int8_dir}: {q.int8_images_per_s:.1f} vs {q.fp32_images_per_s:.1f} images/s "
                f"({q.speedup:.2f}×), captions equal on {q.caption_agreement:.0%} of {q.n_speed_images} images"
            )
            if q.bleu_4_change is not None:
                text += f", BLEU-4 {q.fp32_bleu_4:.4f} → {q.int8_bleu_4:.4f}"
        return text


def fixture_pixels(n_images: int, *, seed: int, engine: CaptionEngine) -> np.ndarray:
    """``n_images`` seeded noise images of mixed sizes around the model's input size, through ``engine.preprocess``."""
    image_size = engine.preprocessing.size
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        height, width = (int(side) for side in rng.integers(image_size // 2, image_size * 2, size=2))
        images.append(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB"))
    return engine.preprocess(images)


def _max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))


@torch.inference_mode()
def verify_export(
    checkpoint_dir: Path,
    onnx_dir: Path,
    *,
    n_images: int = 4,
    seed: int = 0,
    steps: int = 5,
    atol: float = LOGITS_ATOL,
) -> VerifyReport:
    """Compare torch and onnxruntime on ``n_images`` fixture images; raise VicapError on any mismatch.

    Checks: initial states and ``steps`` decoder steps' logits within ``atol``
    (max abs diff), and identical greedy captions.
    """
    if n_images < 1 or steps < 1:
        raise InputError(f"n_images and steps must be positive, got {n_images} and {steps}")
    greedy = DecodeOptions(beam_size=1)
    reference = TorchEngine(load_checkpoint(Path(checkpoint_dir)), decode=greedy)
    export = OnnxExport.read(Path(onnx_dir))
    if export.checkpoint_sha256 != weights_sha256(Path(checkpoint_dir)):
        raise VicapError(f"ONNX export {onnx_dir} was not made from checkpoint {checkpoint_dir}")
    candidate = OnnxEngine(export, decode=greedy)
    pixels = fixture_pixels(n_images, seed=seed, engine=reference)

    model = reference.model
    torch_state = model.start(reference.features(torch.from_numpy(pixels)))
    onnx_state = candidate.encode(pixels)
    state_diff = _max_diff(torch_state, onnx_state)
    tokens = torch.full((n_images,), reference.codec.bos_id, dtype=torch.long)
    logits_diff = 0.0
    for _ in range(steps):
        torch_logits, torch_state = model.step(tokens, torch_state)
        onnx_logits, onnx_state = candidate.step_fn(tokens, onnx_state)
        logits_diff = max(logits_diff, _max_diff([torch_logits], [onnx_logits]))
        tokens = torch_logits.argmax(dim=-1)  # (B,) same inputs for both at the next step

    torch_ids, onnx_ids = reference._forward(pixels), candidate._forward(pixels)
    report = VerifyReport(
        n_images=n_images,
        steps=steps,
        max_abs_diff_state=state_diff,
        max_abs_diff_logits=logits_diff,
        captions_identical=torch_ids == onnx_ids,
        atol=atol,
        torch_captions=tuple(reference.postprocess(torch_ids)),
        onnx_captions=tuple(candidate.postprocess(onnx_ids)),
    )
    if not report.ok:
        differing = sum(a != b for a, b in zip(torch_ids, onnx_ids, strict=True))
        raise VicapError(
            f"ONNX export {onnx_dir} does not match checkpoint {checkpoint_dir}: max abs diff logits "
            f"{logits_diff:.3g}, initial state {state_diff:.3g} (allowed {atol:g}); greedy captions differ on "
            f"{differing}/{n_images} fixture images"
        )
    return report


def export_and_verify(
    checkpoint_dir: Path,
    out_dir: Path,
    *,
    quantize: str | None = None,
    calibration_images: Sequence[Path] = (),
    eval_fn: EvalFn | None = None,
    opset: int | None = None,
) -> ExportReport:
    """Export ``checkpoint_dir`` to ``out_dir``, check parity, and optionally build the int8 variant.

    quantize: None or "int8" (static QDQ encoder in ``out_dir/int8``, calibrated on
    ``calibration_images``, a few hundred training images). eval_fn(engine) -> BLEU-4
    is called on the fp32 and int8 engines to report the quality change.
    The verified export is kept even when quantization fails afterwards.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UnknownNameError("quantization", quantize, QUANTIZATIONS)
    if quantize is not None and not calibration_images:
        raise InputError("--quantize int8 needs calibration images (a few hundred training images)")
    export = export_onnx(Path(checkpoint_dir), Path(out_dir), opset=opset)
    n_images = EXAMPLE_BATCH + 2  # not the traced batch size: checks the dynamic batch axis
    verify = verify_export(Path(checkpoint_dir), export.out_dir, n_images=n_images)
    report = None
    if quantize == "int8":
        report = quantize_int8(export.out_dir, calibration_images, eval_fn=eval_fn)
    return ExportReport(export=export, verify=verify, quantize=report)
