"""PyTorch engines: ``torch`` (fp32 eager) and ``torch-bf16`` (bf16 autocast backbone).

Both run ``model.extract_features`` → ``model.start`` → shared greedy/beam
search over ``model.step``. ``torch-bf16`` runs only the backbone under bf16
autocast with channels_last weights and inputs (fast on CPUs with AMX or
AVX512-BF16); features are cast back to fp32 so the small LSTM decoder and the
beam scores stay fp32, which keeps captions equal to fp32 ones on a trained
model (checked in tests/engines).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vicap_jobs.engines.base import CaptionEngine, DecodeOptions
from vicap_jobs.errors import InputError
from vicap_jobs.models.checkpoint import LoadedCheckpoint, load_checkpoint


def torch_device(device: str) -> torch.device:
    """Parse "cpu" / "cuda" / "cuda:N"; a CUDA device on a machine without one is an InputError."""
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"invalid device {device!r}: use cpu, cuda or cuda:N") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but torch sees no CUDA GPU")
    if parsed.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {device!r}: use cpu, cuda or cuda:N")
    return parsed


class TorchEngine(CaptionEngine):
    """fp32 eager PyTorch; the reference every other engine is compared with."""

    name = "torch"

    def __init__(
        self,
        loaded: LoadedCheckpoint,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> None:
        """Wrap a loaded checkpoint; ``threads`` sets torch's (process-wide) intra-op thread count."""
        self.torch_device = torch_device(device)
        super().__init__(
            vocab=loaded.vocab, image_size=int(loaded.model.config.image_size), device=device, decode=decode
        )
        if threads is not None:
            if threads < 1:
                raise InputError(f"threads must be positive, got {threads}")
            torch.set_num_threads(threads)
        self.checkpoint = loaded
        self.model = loaded.model.to(self.torch_device).eval()

    @classmethod
    def load(
        cls,
        checkpoint_dir: Path,
        *,
        onnx_dir: Path | None = None,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> TorchEngine:
        """Load ``checkpoint_dir`` through ``load_checkpoint``; ``onnx_dir`` is ignored."""
        return cls(load_checkpoint(Path(checkpoint_dir)), device=device, decode=decode, threads=threads)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Backbone grid (B, C, h, w) in fp32."""
        return self.model.extract_features(pixels)

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> list[list[int]]:
        batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.torch_device)
        state = self.model.start(self.features(batch))
        return self._search(self.model.step, state, batch.shape[0])


class TorchBF16Engine(TorchEngine):
    """Backbone under bf16 autocast with channels_last; decoder and beam scores in fp32."""

    name = "torch-bf16"

    def __init__(
        self,
        loaded: LoadedCheckpoint,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(loaded, device=device, decode=decode, threads=threads)
        self.model.backbone.to(memory_format=torch.channels_last)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Backbone grid (B, C, h, w): computed in bf16, returned as fp32."""
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.torch_device.type, dtype=torch.bfloat16):
            grid = self.model.extract_features(pixels)
        return grid.float().contiguous()  # (B, C, h, w), NCHW again for flatten/mean in start()
