"""onnxruntime engines: ``encoder_model.onnx`` once per batch, ``decoder_model.onnx`` once per step.

``onnx`` runs the fp32 export; ``onnx-int8`` its static int8 variant (``<export>/int8``,
int8 encoder, the same fp32 decoder).

The decoder session is wrapped as a ``step_fn`` over torch tensors so the
shared greedy/beam search of :mod:`vicap_jobs.models.decoding` drives it
exactly as it drives the torch model (numpy ↔ torch conversions are zero-copy
on CPU). The folder format (names, ``onnx_config.json``) is
:mod:`vicap_jobs.engines.onnx_format`; the text codec and preprocessing come from
the export folder itself. Providers: CUDA when onnxruntime-gpu sees a GPU and the
device asks for one, else CPU; intra-op threads come from the caller (one worker
process per core group).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from vicap_jobs.devices import parse_device
from vicap_jobs.engines.base import CaptionEngine, DecodeOptions
from vicap_jobs.engines.onnx_format import INPUT_IDS, LOGITS, PIXELS, OnnxExport, open_export
from vicap_jobs.errors import InputError, VicapError
from vicap_jobs.models.codec import load_codec
from vicap_jobs.models.decoding import DecoderState
from vicap_jobs.models.manifest import ModelArtifacts


def select_providers(device: str) -> list[str | tuple[str, dict[str, str]]]:
    """onnxruntime providers for ``device`` ("cpu", "cuda", "cuda:N"); CUDA needs onnxruntime-gpu."""
    parsed = parse_device(device)
    if not parsed.is_cuda:
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise VicapError(
            f"device {device!r} asked for the GPU but this onnxruntime has no CUDAExecutionProvider; "
            "install onnxruntime-gpu (pip install 'vicap-jobs[gpu]') or use --device cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": str(parsed.index or 0)}), "CPUExecutionProvider"]


def make_session(path: Path, *, device: str, threads: int | None) -> ort.InferenceSession:
    """An onnxruntime InferenceSession with full graph optimizations and ``threads`` intra-op threads.

    threads None: onnxruntime's default (all cores). Pool threads keep onnxruntime's default
    spinning: turning it off changed nothing measurable (16.5 vs 16.9 images/s).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    # Between decoder steps the beam search runs small torch ops (log_softmax, topk). Spinning
    # onnxruntime threads starve them on small machines: on 2 cores log_softmax took 4 ms a call.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be positive, got {threads}")
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=select_providers(device))
    except VicapError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise VicapError(f"onnxruntime cannot load {path}: {exc}") from exc


class OnnxDecoderStep:
    """The decoder session as ``step_fn(tokens (B,), state) -> (logits (B, V), state)`` on torch tensors."""

    def __init__(self, session: ort.InferenceSession, export: OnnxExport) -> None:
        self.session = session
        self.state_names = export.state_names
        self.output_names = [LOGITS, *export.next_state_names]
        self.changing = [i for i in range(len(export.state_names)) if i not in export.passthrough_states]

    def __call__(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        feed: dict[str, Any] = {INPUT_IDS: tokens.cpu().numpy().astype(np.int64, copy=False)}
        feed.update({name: part.cpu().contiguous().numpy() for name, part in zip(self.state_names, state, strict=True)})
        logits, *updated = self.session.run(self.output_names, feed)
        new_state = list(state)
        for i, value in zip(self.changing, updated, strict=True):
            new_state[i] = torch.from_numpy(value)
        return torch.from_numpy(logits), tuple(new_state)


class OnnxEngine(CaptionEngine):
    """onnxruntime encoder + decoder step, with the shared greedy/beam search on top."""

    name = "onnx"

    def __init__(
        self,
        export: OnnxExport,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> None:
        codec = load_codec(export.codec_kind, export.codec_path)
        super().__init__(codec=codec, preprocessing=export.preprocessing, device=device, decode=decode)
        if threads is not None and threads >= 1:
            # The search loop runs torch ops (log_softmax, topk, index_select) between session runs;
            # left at torch's default (all cores) they fight onnxruntime's pool (measured: half the throughput
            # on a 16-core host at threads=2).
            torch.set_num_threads(threads)
        self.export = export
        self.encoder = make_session(export.encoder_path, device=device, threads=threads)
        self.decoder = make_session(export.decoder_path, device=device, threads=threads)
        self.step_fn = OnnxDecoderStep(self.decoder, export)

    @classmethod
    def load(
        cls,
        artifacts: ModelArtifacts,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> OnnxEngine:
        """Open the ONNX export of ``artifacts`` (default ``<checkpoint>/onnx``); refuse a missing or stale one."""
        export = open_export(artifacts, int8=cls.precision == "int8", engine=cls.name)
        return cls(export, device=device, decode=decode, threads=threads)

    def encode(self, pixels: np.ndarray) -> DecoderState:
        """Pixels (B, 3, S, S) → initial decoder state as torch tensors (CPU)."""
        outputs = self.encoder.run(list(self.export.state_names), {PIXELS: np.ascontiguousarray(pixels, np.float32)})
        return tuple(torch.from_numpy(value) for value in outputs)

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> list[list[int]]:
        return self._search(self.step_fn, self.encode(pixels), pixels.shape[0])


class OnnxInt8Engine(OnnxEngine):
    """onnxruntime on the static int8 export (``export onnx --quantize int8``): int8 encoder, fp32 decoder step."""

    name = "onnx-int8"
    precision = "int8"
