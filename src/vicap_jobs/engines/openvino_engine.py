"""OpenVINO engines over the ONNX export: ``openvino`` (fp32), ``openvino-bf16`` and ``openvino-int8``.

OpenVINO reads the same ``encoder_model.onnx`` / ``decoder_model.onnx`` as the
``onnx`` engine (no second export format) and compiles them for the CPU it runs on.
Only the image encoder changes precision between the three engines; the decoder
step always runs in f32, so beam scores stay those of the fp32 model:

- ``openvino``: f32 throughout (OpenVINO picks bf16 by default on CPUs with AMX;
  we ask for f32 explicitly).
- ``openvino-bf16``: encoder with bf16 inference precision, for CPUs with AVX512-BF16 or
  AMX (OpenVINO lists "BF16" among the CPU's capabilities); refused elsewhere.
- ``openvino-int8``: the static int8 (QDQ) encoder of ``export onnx --quantize int8``,
  which OpenVINO runs with VNNI / AMX int8 kernels.

Measured on the 2-core AMD EPYC (Zen 4: AVX512-BF16, AVX512-VNNI, no AMX), DenseNet201
encoder at 224 px, batch 8, against torch fp32 eager in one run: onnxruntime fp32 ~4×,
OpenVINO f32 ~4.4×, OpenVINO bf16 ~7×, onnxruntime int8 ~7×, OpenVINO int8 ~8.4×
(see ``bench/results/bulk_caption.json`` for the end-to-end figures). Which one a
model runs with by default is measured per machine (``engines/choice.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import openvino as ov
import torch

from vicap_jobs.devices import parse_device
from vicap_jobs.engines.base import CaptionEngine, DecodeOptions
from vicap_jobs.engines.onnx_format import INPUT_IDS, LOGITS, PIXELS, OnnxExport, open_export
from vicap_jobs.errors import EngineUnavailableError, InputError, VicapError
from vicap_jobs.models.codec import load_codec
from vicap_jobs.models.decoding import DecoderState
from vicap_jobs.models.manifest import ModelArtifacts

_CORE: ov.Core | None = None


def core() -> ov.Core:
    """The process's one OpenVINO Core (it owns the plugins and their thread pools)."""
    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


def cpu_capabilities() -> frozenset[str]:
    """What OpenVINO's CPU plugin can do here, e.g. {"FP32", "BF16", "INT8"}."""
    return frozenset(str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def compile_for_cpu(path: Any, *, precision: str, threads: int | None) -> ov.CompiledModel:
    """Compile an ONNX file for this CPU with ``precision`` ("f32" or "bf16") and ``threads`` threads."""
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",  # one stream: a worker runs one batch at a time
        # OpenVINO pins its threads to cores by default. Several worker processes share a host's cores (and this
        # process may hold other engines): pinned threads of two compiled models then queue on the same cores.
        # Measured: a bench child ran openvino-bf16 at 6 images/s instead of 28 while its parent held one.
        "ENABLE_CPU_PINNING": False,
    }
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be positive, got {threads}")
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        return core().compile_model(str(path), "CPU", config)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VicapError(f"OpenVINO cannot compile {path}: {first}") from exc


class OpenVinoDecoderStep:
    """The compiled decoder as ``step_fn(tokens (B,), state) -> (logits (B, V), state)`` on torch tensors."""

    def __init__(self, compiled: ov.CompiledModel, export: OnnxExport) -> None:
        self.request = compiled.create_infer_request()
        self.state_names = export.state_names
        self.logits = compiled.output(LOGITS)
        self.next_states = [compiled.output(name) for name in export.next_state_names]
        self.changing = [i for i in range(len(export.state_names)) if i not in export.passthrough_states]

    def __call__(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        feed: dict[str, np.ndarray] = {INPUT_IDS: tokens.cpu().numpy().astype(np.int64, copy=False)}
        feed.update({name: part.cpu().contiguous().numpy() for name, part in zip(self.state_names, state, strict=True)})
        results = self.request.infer(feed, share_inputs=True)  # outputs are copied out: the next call reuses them
        new_state = list(state)
        for i, port in zip(self.changing, self.next_states, strict=True):
            new_state[i] = torch.from_numpy(results[port])
        return torch.from_numpy(results[self.logits]), tuple(new_state)


class OpenVinoEngine(CaptionEngine):
    """OpenVINO encoder + decoder step on the CPU, with the shared greedy/beam search on top."""

    name = "openvino"
    encoder_precision: ClassVar[str] = "f32"  # OpenVINO's inference precision for the encoder

    def __init__(
        self,
        export: OnnxExport,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> None:
        if parse_device(device).is_cuda:
            raise EngineUnavailableError(f"engine {self.name!r} runs on the CPU; on a GPU use torch or onnx")
        self._check_cpu()
        codec = load_codec(export.codec_kind, export.codec_path)
        super().__init__(codec=codec, preprocessing=export.preprocessing, device=device, decode=decode)
        if threads is not None and threads >= 1:
            torch.set_num_threads(threads)  # the search's torch ops between decoder steps
        self.export = export
        encoder = compile_for_cpu(export.encoder_path, precision=self.encoder_precision, threads=threads)
        self.encoder = encoder.create_infer_request()
        self.encoder_outputs = [encoder.output(name) for name in export.state_names]
        decoder = compile_for_cpu(export.decoder_path, precision="f32", threads=threads)
        self.step_fn = OpenVinoDecoderStep(decoder, export)

    @classmethod
    def _check_cpu(cls) -> None:
        """Refuse a precision this CPU has no instructions for (the engine would be slow or emulated)."""

    @classmethod
    def load(
        cls,
        artifacts: ModelArtifacts,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> OpenVinoEngine:
        """Open the ONNX export of ``artifacts`` (its int8 variant for ``openvino-int8``)."""
        export = open_export(artifacts, int8=cls.precision == "int8", engine=cls.name)
        return cls(export, device=device, decode=decode, threads=threads)

    def encode(self, pixels: np.ndarray) -> DecoderState:
        """Pixels (B, 3, S, S) → initial decoder state as torch tensors."""
        results = self.encoder.infer({PIXELS: np.ascontiguousarray(pixels, np.float32)})
        return tuple(torch.from_numpy(results[port]) for port in self.encoder_outputs)

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> list[list[int]]:
        return self._search(self.step_fn, self.encode(pixels), pixels.shape[0])


class OpenVinoBF16Engine(OpenVinoEngine):
    """Encoder in bf16 (AVX512-BF16 or AMX), decoder step in f32."""

    name = "openvino-bf16"
    precision = "bf16"
    encoder_precision = "bf16"

    @classmethod
    def _check_cpu(cls) -> None:
        if "BF16" not in cpu_capabilities():
            raise EngineUnavailableError(f"engine {cls.name!r} needs a CPU with bf16 instructions (AVX512-BF16 or AMX)")


class OpenVinoInt8Engine(OpenVinoEngine):
    """The static int8 encoder (``export onnx --quantize int8``) with VNNI/AMX kernels, decoder step in f32."""

    name = "openvino-int8"
    precision = "int8"

    @classmethod
    def _check_cpu(cls) -> None:
        if "INT8" not in cpu_capabilities():
            raise EngineUnavailableError(f"engine {cls.name!r} needs a CPU with int8 instructions")
