"""Export a step-wise captioner checkpoint (the CNN+LSTM families) to two ONNX graphs.

The folder format (file and tensor names, ``onnx_config.json``) is
:mod:`vicap_jobs.engines.onnx_format`, shared with the ``onnx`` engine:
``encoder_model.onnx`` computes the decoder's initial state
``model.start(model.extract_features(pixels))``; ``decoder_model.onnx`` runs one
decoding step. Parts of the state the step returns unchanged (the attention
memory, the image skip vector) are decoder inputs only: re-emitting them would
copy megabytes per step. Every input and output has a dynamic batch axis, so
the beam search can run (B·K) rows through the same graphs.

The folder also holds a copy of the checkpoint's text codec file, so an engine
needs nothing else, and it appears whole or not at all: everything is written
to a temporary sibling and renamed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from vicap_jobs.engines.onnx_format import (
    CONFIG_FILE,
    DECODER_FILE,
    ENCODER_FILE,
    EXPORT_FORMAT,
    FORMAT_VERSION,
    INPUT_IDS,
    LOGITS,
    PIXELS,
    OnnxExport,
    next_state_name,
    state_name,
)
from vicap_jobs.errors import InputError, VicapError
from vicap_jobs.models.captioner import StepCaptioner
from vicap_jobs.models.checkpoint import LoadedCheckpoint, load_checkpoint
from vicap_jobs.models.manifest import weights_sha256
from vicap_jobs.models.registry import get_family

EXAMPLE_BATCH = 2  # export traces batch 2; the batch axis stays dynamic


class EncoderGraph(nn.Module):
    """pixels (B, 3, S, S) → initial decoder state, as one traceable module."""

    def __init__(self, model: StepCaptioner) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.start(self.model.extract_features(pixels)))


class DecoderGraph(nn.Module):
    """One step: tokens (B,), state parts → logits (B, V) and the changing state parts."""

    def __init__(self, model: StepCaptioner, passthrough: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.passthrough = passthrough

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new_state = self.model.step(tokens, tuple(state))
        return (logits, *(part for i, part in enumerate(new_state) if i not in self.passthrough))


def passthrough_parts(model: StepCaptioner, state: tuple[torch.Tensor, ...], bos_id: int) -> tuple[int, ...]:
    """Indices of the state parts ``model.step`` returns as the very same tensors."""
    tokens = torch.full((state[0].shape[0],), bos_id, dtype=torch.long)
    with torch.no_grad():
        _, new_state = model.step(tokens, state)
    if len(new_state) != len(state):
        raise VicapError(
            f"model.step returned {len(new_state)} state parts for {len(state)}: breaks the model contract"
        )
    return tuple(i for i, (old, new) in enumerate(zip(state, new_state, strict=True)) if new is old)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints and its warnings about framework internals."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[Any, ...],
    opset: int | None,
) -> None:
    """torch.export-based ONNX export of ``module`` into one self-contained file."""
    try:
        with _quiet_exporter():
            torch.onnx.export(
                module.eval(),
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many internal types; report which graph failed
        raise VicapError(f"ONNX export of {path.name} failed: {type(exc).__name__}: {str(exc)[:500]}") from exc


def export_loaded(loaded: LoadedCheckpoint, out_dir: Path, *, opset: int | None = None) -> OnnxExport:
    """Export an already loaded checkpoint into ``out_dir`` (written whole, via a temp sibling)."""
    family = str(loaded.manifest["family"])
    if EXPORT_FORMAT not in get_family(family).exports:
        raise InputError(f"model family {family!r} cannot be exported to ONNX")
    if not isinstance(loaded.model, StepCaptioner):
        raise InputError(f"model family {family!r} is not a step-wise captioner; its ONNX export is not written yet")
    model, codec, size = loaded.model.to("cpu").eval(), loaded.codec, loaded.preprocessing.size
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randn(EXAMPLE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))  # (B, 3, S, S)
    with torch.no_grad():
        state = EncoderGraph(model)(pixels)
    passthrough = passthrough_parts(model, state, codec.bos_id)
    names = tuple(state_name(i) for i in range(len(state)))
    next_names = tuple(next_state_name(i) for i in range(len(state)) if i not in passthrough)
    batch = torch.export.Dim("batch", min=1)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _export_graph(
            EncoderGraph(model),
            (pixels,),
            tmp / ENCODER_FILE,
            input_names=[PIXELS],
            output_names=list(names),
            dynamic_shapes=({0: batch},),
            opset=opset,
        )
        tokens = torch.full((EXAMPLE_BATCH,), codec.bos_id, dtype=torch.long)
        _export_graph(
            DecoderGraph(model, passthrough),
            (tokens, *state),
            tmp / DECODER_FILE,
            input_names=[INPUT_IDS, *names],
            output_names=[LOGITS, *next_names],
            dynamic_shapes=({0: batch}, tuple({0: batch} for _ in state)),
            opset=opset,
        )
        _check_graph_names(tmp / ENCODER_FILE, [PIXELS], list(names))
        _check_graph_names(tmp / DECODER_FILE, [INPUT_IDS, *names], [LOGITS, *next_names])
        codec_file = codec.save_codec(tmp)
        sha = weights_sha256(loaded.path)
        config = _config_json(loaded, codec_file, names, next_names, passthrough, opset, sha, state)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return OnnxExport.read(out_dir)


def export_onnx(checkpoint_dir: Path, out_dir: Path, *, opset: int | None = None) -> OnnxExport:
    """Export checkpoint ``checkpoint_dir`` to ``out_dir``; ``opset`` None is the exporter's default.

    An existing ``out_dir`` is replaced only once the new export is complete.
    """
    return export_loaded(load_checkpoint(Path(checkpoint_dir)), Path(out_dir), opset=opset)


def _config_json(
    loaded: LoadedCheckpoint,
    codec_file: str,
    names: tuple[str, ...],
    next_names: tuple[str, ...],
    passthrough: tuple[int, ...],
    opset: int | None,
    sha: str,
    state: tuple[torch.Tensor, ...],
) -> dict[str, Any]:
    manifest, codec = loaded.manifest, loaded.codec
    return {
        "format_version": FORMAT_VERSION,
        "family": manifest["family"],
        "backbone": manifest.get("backbone"),
        "image_size": loaded.preprocessing.size,
        "preprocessing": loaded.preprocessing.to_json(),
        "tokenization": codec.tokenization,
        "vocab_size": len(codec),
        "bos_id": codec.bos_id,
        "eos_id": codec.eos_id,
        "pad_id": codec.pad_id,
        "encoder_file": ENCODER_FILE,
        "decoder_file": DECODER_FILE,
        "codec": {"kind": codec.kind, "file": codec_file},
        **({"vocab_file": codec_file} if codec.kind == "vocab" else {}),  # what readers before "codec" look for
        "encoder": {"inputs": [PIXELS], "outputs": list(names)},
        "decoder": {"inputs": [INPUT_IDS, *names], "outputs": [LOGITS, *next_names]},
        "state_names": list(names),
        "next_state_names": list(next_names),
        "passthrough_states": list(passthrough),
        "state_shapes": [["batch", *part.shape[1:]] for part in state],
        "opset": opset,
        "checkpoint": {
            "path": str(Path(loaded.path).resolve()),
            "weights_sha256": sha,
            "git_commit": manifest.get("git_commit"),
            "meta": manifest.get("meta", {}),
        },
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        "quantization": None,
    }


def _check_graph_names(path: Path, inputs: list[str], outputs: list[str]) -> None:
    """The exporter may drop unused inputs or rename outputs; engines rely on the exact names."""
    graph = onnx.load(str(path), load_external_data=False).graph
    got_in = [value.name for value in graph.input]
    got_out = [value.name for value in graph.output]
    if got_in != inputs or got_out != outputs:
        raise VicapError(f"{path.name}: exported names {got_in} → {got_out}, expected {inputs} → {outputs}")


def _replace_dir(new: Path, target: Path) -> None:
    """Move finished folder ``new`` to ``target``, replacing an old one only after the new one is in place."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        target.rename(old)
    try:
        new.rename(target)
    except OSError:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
