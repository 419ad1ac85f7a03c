"""Device strings ("cpu", "cuda", "cuda:N"): one parser for training options, torch engines and onnxruntime.

:func:`parse_device` needs no torch, so options can be checked where torch is not
loaded yet (CLI, services). :func:`torch_device` imports torch on first use and also
checks that torch sees a GPU when one is asked for. Mistakes are one-line InputErrors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from vicap_jobs.errors import InputError

if TYPE_CHECKING:
    import torch

DeviceKind = Literal["cpu", "cuda"]
_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class Device:
    """A parsed device: ``kind`` and, for CUDA, an optional GPU ``index``."""

    kind: DeviceKind
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"


def parse_device(device: str) -> Device:
    """ "cpu", "cuda" or "cuda:N" → :class:`Device`; anything else is an InputError saying what to use."""
    match = _DEVICE.match(device.strip()) if isinstance(device, str) else None
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    kind: DeviceKind = "cuda" if match.group(1) == "cuda" else "cpu"
    return Device(kind, int(match.group(2)) if match.group(2) is not None else None)


def torch_device(device: str) -> torch.device:
    """The torch device for ``device``; asking for CUDA where torch sees no GPU is an InputError."""
    parsed = parse_device(device)
    import torch  # heavy: only callers that run torch pay for it

    if parsed.is_cuda and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    return torch.device(str(parsed))
