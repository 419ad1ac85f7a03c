"""Export a CNN+LSTM checkpoint to two ONNX graphs, named as optimum names them.

``encoder_model.onnx``: ``pixel_values`` (B, 3, S, S) float32 → ``state_0..k``,
the decoder's initial state ``model.start(model.extract_features(pixels))``.

``decoder_model.onnx``: one decoding step, ``input_ids`` (B,) int64 and
``state_0..k`` → ``logits`` (B, V) and ``next_state_i`` for every state part the
step changes. Parts the step returns unchanged (the attention memory, the
image skip vector) are inputs only: re-emitting them would copy megabytes per
step; ``onnx_config.json`` lists them under ``passthrough_states`` and the
engine feeds them back as they are. Every input and output has a dynamic batch
axis, so the beam search can run (B·K) rows through the same graphs.

The folder also holds ``onnx_config.json`` (names, image size, tokenization,
the checkpoint it came from with a hash of its weights) and a copy of
``vocab.json``, so an engine needs nothing else. The folder appears whole or
not at all: everything is written to a temporary sibling and renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vicap_jobs.data.vocab import BOS_ID, EOS_ID, PAD_ID
from vicap_jobs.errors import InputError, NotFoundError, VicapError
from vicap_jobs.models.checkpoint import LoadedCheckpoint, load_checkpoint, read_manifest
from vicap_jobs.models.registry import get_family

FORMAT_VERSION = 1
ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"
CONFIG_FILE = "onnx_config.json"
VOCAB_FILE = "vocab.json"
DEFAULT_SUBDIR = "onnx"
PIXELS = "pixel_values"
INPUT_IDS = "input_ids"
LOGITS = "logits"
EXAMPLE_BATCH = 2  # export traces batch 2; the batch axis stays dynamic


def state_name(index: int) -> str:
    """Name of decoder state part ``index`` as an encoder output / decoder input."""
    return f"state_{index}"


def next_state_name(index: int) -> str:
    """Name of decoder state part ``index`` as a decoder output."""
    return f"next_state_{index}"


def default_onnx_dir(checkpoint_dir: Path) -> Path:
    """Where ``vicap-jobs export onnx`` puts a checkpoint's export by default: ``<checkpoint>/onnx``."""
    return Path(checkpoint_dir) / DEFAULT_SUBDIR


def weights_sha256(checkpoint_dir: Path) -> str:
    """Hex SHA-256 of the checkpoint's weights file: ties an export to the exact weights."""
    checkpoint_dir = Path(checkpoint_dir)
    manifest = read_manifest(checkpoint_dir)
    path = checkpoint_dir / manifest.get("weights_file", "model.safetensors")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise NotFoundError(f"cannot read checkpoint weights {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and the graph names an engine needs."""

    out_dir: Path
    encoder_path: Path
    decoder_path: Path
    config_path: Path
    family: str
    image_size: int
    tokenization: str
    state_names: tuple[str, ...]  # encoder outputs = decoder state inputs, in state order
    next_state_names: tuple[str, ...]  # decoder state outputs (changing parts only)
    passthrough_states: tuple[int, ...]  # state parts the step leaves unchanged
    opset: int | None
    checkpoint_sha256: str

    @classmethod
    def read(cls, onnx_dir: Path) -> OnnxExport:
        """Read ``onnx_config.json`` of an export folder; a missing or broken one is a VicapError."""
        onnx_dir = Path(onnx_dir)
        path = onnx_dir / CONFIG_FILE
        if not path.is_file():
            raise NotFoundError(
                f"{onnx_dir} is not an ONNX export (no {CONFIG_FILE}); run `vicap-jobs export onnx MODEL`"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format_version") != FORMAT_VERSION:
                raise InputError(f"format_version {data.get('format_version')!r}, this code reads {FORMAT_VERSION}")
            export = cls(
                out_dir=onnx_dir,
                encoder_path=onnx_dir / data["encoder_file"],
                decoder_path=onnx_dir / data["decoder_file"],
                config_path=path,
                family=str(data["family"]),
                image_size=int(data["image_size"]),
                tokenization=str(data["tokenization"]),
                state_names=tuple(data["state_names"]),
                next_state_names=tuple(data["next_state_names"]),
                passthrough_states=tuple(int(i) for i in data["passthrough_states"]),
                opset=data.get("opset"),
                checkpoint_sha256=str(data["checkpoint"]["weights_sha256"]),
            )
        except (
            OSError,
            UnicodeDecodeError,
            json.JSONDecodeError,
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
        ) as exc:
            raise InputError(f"cannot read ONNX export config {path}: {exc}") from exc
        except InputError as exc:
            raise InputError(f"cannot read ONNX export config {path}: {exc}") from exc
        for file in (export.encoder_path, export.decoder_path, onnx_dir / VOCAB_FILE):
            if not file.is_file():
                raise NotFoundError(f"ONNX export {onnx_dir} is incomplete: {file.name} is missing; export again")
        return export

    @property
    def vocab_path(self) -> Path:
        return self.out_dir / VOCAB_FILE


class EncoderGraph(nn.Module):
    """pixels (B, 3, S, S) → initial decoder state, as one traceable module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.start(self.model.extract_features(pixels)))


class DecoderGraph(nn.Module):
    """One step: tokens (B,), state parts → logits (B, V) and the changing state parts."""

    def __init__(self, model: nn.Module, passthrough: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.passthrough = passthrough

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new_state = self.model.step(tokens, tuple(state))
        return (logits, *(part for i, part in enumerate(new_state) if i not in self.passthrough))


def passthrough_parts(model: nn.Module, state: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
    """Indices of the state parts ``model.step`` returns as the very same tensors."""
    tokens = torch.full((state[0].shape[0],), BOS_ID, dtype=torch.long)
    with torch.no_grad():
        _, new_state = model.step(tokens, state)
    if len(new_state) != len(state):
        raise VicapError(
            f"model.step returned {len(new_state)} state parts for {len(state)}: breaks the model contract"
        )
    return tuple(i for i, (old, new) in enumerate(zip(state, new_state, strict=True)) if new is old)


@contextlib.contextmanager
def _quiet_exporter():
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
    manifest, model = loaded.manifest, loaded.model.to("cpu").eval()
    family = str(manifest["family"])
    if "onnx" not in get_family(family).exportable:
        raise InputError(f"model family {family!r} cannot be exported to ONNX")
    config = model.config
    image_size = int(config.image_size)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randn(EXAMPLE_BATCH, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        state = EncoderGraph(model)(pixels)
    passthrough = passthrough_parts(model, state)
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
        tokens = torch.full((EXAMPLE_BATCH,), BOS_ID, dtype=torch.long)
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
        loaded.vocab.save(tmp / VOCAB_FILE)
        sha = weights_sha256(loaded.path)
        (tmp / CONFIG_FILE).write_text(
            json.dumps(
                _config_json(loaded, names, next_names, passthrough, opset, sha, state), ensure_ascii=False, indent=1
            ),
            encoding="utf-8",
        )
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


def export_and_verify(checkpoint_dir: Path, out_dir: Path, **options: Any) -> Any:
    """Alias of :func:`vicap_jobs.export.verify.export_and_verify` (its home; imported lazily, no cycle)."""
    from vicap_jobs.export.verify import export_and_verify as run

    return run(checkpoint_dir, out_dir, **options)


def _config_json(
    loaded: LoadedCheckpoint,
    names: tuple[str, ...],
    next_names: tuple[str, ...],
    passthrough: tuple[int, ...],
    opset: int | None,
    sha: str,
    state: tuple[torch.Tensor, ...],
) -> dict[str, Any]:
    import onnx

    manifest, config = loaded.manifest, loaded.model.config
    return {
        "format_version": FORMAT_VERSION,
        "family": manifest["family"],
        "backbone": getattr(config, "backbone", None),
        "image_size": int(config.image_size),
        "tokenization": loaded.vocab.tokenization,
        "vocab_size": len(loaded.vocab),
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "pad_id": PAD_ID,
        "encoder_file": ENCODER_FILE,
        "decoder_file": DECODER_FILE,
        "vocab_file": VOCAB_FILE,
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
    import onnx

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
