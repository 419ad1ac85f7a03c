"""Inference engines behind one interface (:class:`CaptionEngine`) and the name → engine registry.

``ENGINES`` maps each engine name to "module:Class" so that importing this
package (e.g. for CLI choices) loads neither torch nor onnxruntime; each
engine class has ``load(checkpoint_dir, *, onnx_dir, device, decode, threads)``.
The name "int8" is reserved for the vision-language families (BLIP), which
will bring their own 8-bit engine; CNN+LSTM models get int8 through
``vicap-jobs export onnx --quantize int8`` and the ``onnx`` engine.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from vicap_jobs.errors import UnknownNameError

if TYPE_CHECKING:
    from vicap_jobs.engines.base import CaptionEngine, DecodeOptions

ENGINES: dict[str, str] = {
    "torch": "vicap_jobs.engines.torch_engine:TorchEngine",
    "torch-bf16": "vicap_jobs.engines.torch_engine:TorchBF16Engine",
    "onnx": "vicap_jobs.engines.onnx_engine:OnnxEngine",
}
RESERVED_ENGINES: dict[str, str] = {
    "int8": "reserved for the vision-language families (BLIP), not available yet; "
    "for CNN+LSTM models export with --quantize int8 and use engine 'onnx'",
}

__all__ = ["ENGINES", "RESERVED_ENGINES", "UnknownEngineError", "engine_class", "engine_names", "load_engine"]


class UnknownEngineError(UnknownNameError):
    """An engine name outside ``ENGINES``; the message lists the valid ones and the reserved ones."""

    def __init__(self, name: str, valid: list[str] | tuple[str, ...], *, kind: str = "engine") -> None:
        super().__init__(kind, name, valid)
        reserved = "; ".join(f"{key!r} is {why}" for key, why in RESERVED_ENGINES.items())
        self.args = (f"{self.args[0]} ({reserved})",)


def engine_names() -> list[str]:
    """Names accepted by :func:`load_engine`."""
    return sorted(ENGINES)


def engine_class(name: str) -> type[CaptionEngine]:
    """The engine class registered as ``name``; an unknown name lists the valid ones."""
    if name not in ENGINES:
        raise UnknownEngineError(name, engine_names())
    module, _, attr = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def load_engine(
    name: str,
    checkpoint_dir: Path,
    *,
    onnx_dir: Path | None = None,
    device: str = "cpu",
    decode: DecodeOptions | None = None,
    threads: int | None = None,
) -> CaptionEngine:
    """Open checkpoint ``checkpoint_dir`` with engine ``name`` ("torch", "torch-bf16", "onnx").

    onnx_dir: the export folder for "onnx" (default ``<checkpoint>/onnx``);
    threads: intra-op threads (torch's setting is process-wide).
    The engine must be one the checkpoint's family lists in its FamilySpec.
    """
    from vicap_jobs.models.checkpoint import read_manifest
    from vicap_jobs.models.registry import get_family

    cls = engine_class(name)
    family = get_family(read_manifest(Path(checkpoint_dir))["family"])
    if name not in family.engines:
        raise UnknownEngineError(name, family.engines, kind=f"engine for model family {family.name!r}")
    return cls.load(Path(checkpoint_dir), onnx_dir=onnx_dir, device=device, decode=decode, threads=threads)
