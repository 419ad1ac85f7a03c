"""Inference engines behind one interface (:class:`~vicap_jobs.engines.base.CaptionEngine`) and the one loader.

Engine names belong to model families: each family's registry line
(``vicap_jobs.models.registry``) maps its engine names to "module:Class", the
first being its default. :func:`load_engine` reads the family from the
checkpoint manifest (no torch needed for that), asks the family for the engine
class and lets the class open the artifacts. Importing this package loads
neither torch nor onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vicap_jobs.engines.base import DecodeOptions
from vicap_jobs.models.manifest import ModelArtifacts, read_manifest
from vicap_jobs.models.registry import UnknownEngineError, get_family

if TYPE_CHECKING:
    from vicap_jobs.engines.base import CaptionEngine

__all__ = ["DecodeOptions", "ModelArtifacts", "UnknownEngineError", "load_engine"]


def load_engine(
    name: str,
    artifacts: ModelArtifacts,
    *,
    device: str = "cpu",
    threads: int | None = None,
    decode: DecodeOptions | None = None,
) -> CaptionEngine:
    """Open the model at ``artifacts`` with engine ``name`` of its family (e.g. "onnx", "torch", "torch-bf16").

    device: "cpu", "cuda" or "cuda:N"; threads: intra-op threads (torch's setting is
    process-wide); decode: search options (default beam 3, 20 tokens). A name the
    checkpoint's family does not list raises UnknownEngineError listing the ones it does.
    """
    family = get_family(read_manifest(artifacts.checkpoint_dir)["family"])
    engine_class: type[CaptionEngine] = family.engine_class(name)
    return engine_class.load(artifacts, device=device, decode=decode, threads=threads)
