"""PyTorch engines for step-wise captioners: ``torch`` (fp32 eager) and ``torch-bf16`` (bf16 autocast encoder).

Both run ``model.extract_features`` → ``model.start`` → shared greedy/beam search
over ``model.step`` (the contract of :mod:`vicap_jobs.models.captioner`).
``torch-bf16`` runs only the feature extractor under bf16 autocast with
channels_last weights and inputs (fast on CPUs with AMX or AVX512-BF16); features
are cast back to fp32 so the small LSTM decoder and the beam scores stay fp32,
which keeps captions equal to fp32 ones on a trained model (checked by the family
contract tests).
"""

from __future__ import annotations

import numpy as np
import torch

from vicap_jobs.devices import torch_device
from vicap_jobs.engines.base import CaptionEngine, DecodeOptions
from vicap_jobs.errors import InputError
from vicap_jobs.models.captioner import StepCaptioner
from vicap_jobs.models.checkpoint import LoadedCheckpoint, load_checkpoint
from vicap_jobs.models.manifest import ModelArtifacts


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
        super().__init__(codec=loaded.codec, preprocessing=loaded.preprocessing, device=device, decode=decode)
        if threads is not None:
            if threads < 1:
                raise InputError(f"threads must be positive, got {threads}")
            torch.set_num_threads(threads)
        if not isinstance(loaded.model, StepCaptioner):
            raise InputError(
                f"engine {self.name!r} runs step-wise captioners; model family {loaded.manifest['family']!r} "
                f"built a {type(loaded.model).__name__}"
            )
        self.checkpoint = loaded
        model = loaded.model
        if not getattr(model, "keeps_device", False):  # weights placed at load (bitsandbytes) stay put
            model = model.to(self.torch_device)
        self.model: StepCaptioner = model.eval()

    @classmethod
    def load(
        cls,
        artifacts: ModelArtifacts,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> TorchEngine:
        """Load the checkpoint of ``artifacts`` (exports are not used)."""
        return cls(load_checkpoint(artifacts.checkpoint_dir), device=device, decode=decode, threads=threads)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features (B, ...) in fp32."""
        return self.model.extract_features(pixels)

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> list[list[int]]:
        batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.torch_device)
        state = self.model.start(self.features(batch))
        return self._search(self.model.step, state, batch.shape[0])


class TorchBF16Engine(TorchEngine):
    """Feature extractor under bf16 autocast with channels_last; decoder and beam scores in fp32."""

    name = "torch-bf16"
    precision = "bf16"

    def __init__(
        self,
        loaded: LoadedCheckpoint,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(loaded, device=device, decode=decode, threads=threads)
        self.model.feature_extractor().to(memory_format=torch.channels_last)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features (B, C, h, w): computed in bf16, returned as fp32."""
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.torch_device.type, dtype=torch.bfloat16):
            grid = self.model.extract_features(pixels)
        return grid.float().contiguous()  # (B, C, h, w), NCHW again for flatten/mean in start()
