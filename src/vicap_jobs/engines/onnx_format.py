"""The ONNX export folder format, shared by the exporter (``vicap_jobs.export.onnx``) and the ``onnx`` engine.

File names as optimum names them: ``encoder_model.onnx`` maps ``pixel_values``
(B, 3, S, S) float32 to ``state_0..k``, the decoder's initial state;
``decoder_model.onnx`` runs one decoding step, ``input_ids`` (B,) int64 and
``state_0..k`` → ``logits`` (B, V) and ``next_state_i`` for every state part the
step changes. Parts the step returns unchanged are inputs only and listed under
``passthrough_states``. ``onnx_config.json`` records names, preprocessing, the text
codec (a copy of the checkpoint's codec file sits in the folder) and the checkpoint
it came from with the digest of its weights (``models.manifest.weights_sha256``).
The static int8 variant (``export onnx --quantize int8``) is a complete export folder
of its own in ``<export>/int8``, marked by a ``quantization`` entry; :func:`open_export`
finds either for an engine and refuses one made from other weights.

No torch, onnx or onnxruntime import here: reading the format is cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vicap_jobs.data.images import Preprocessing
from vicap_jobs.errors import InputError, NotFoundError
from vicap_jobs.models.manifest import ModelArtifacts, weights_sha256

FORMAT_VERSION = 1
EXPORT_FORMAT = "onnx"  # the key of this format in ModelArtifacts.exports and FamilySpec.exports
ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"
CONFIG_FILE = "onnx_config.json"
PIXELS = "pixel_values"
INPUT_IDS = "input_ids"
LOGITS = "logits"
INT8_SUBDIR = "int8"  # where ``export onnx --quantize int8`` puts the int8 variant, inside the fp32 export


def state_name(index: int) -> str:
    """Name of decoder state part ``index`` as an encoder output / decoder input."""
    return f"state_{index}"


def next_state_name(index: int) -> str:
    """Name of decoder state part ``index`` as a decoder output."""
    return f"next_state_{index}"


def default_onnx_dir(checkpoint_dir: Path) -> Path:
    """Where ``vicap-jobs export onnx`` puts a checkpoint's export by default: ``<checkpoint>/onnx``."""
    return Path(checkpoint_dir) / EXPORT_FORMAT


@dataclass(frozen=True)
class OnnxExport:
    """An export folder as read from its ``onnx_config.json``: paths and the graph names an engine needs."""

    out_dir: Path
    encoder_path: Path
    decoder_path: Path
    config_path: Path
    family: str
    preprocessing: Preprocessing
    tokenization: str
    codec_kind: str
    codec_path: Path  # the copy of the checkpoint's codec file
    state_names: tuple[str, ...]  # encoder outputs = decoder state inputs, in state order
    next_state_names: tuple[str, ...]  # decoder state outputs (changing parts only)
    passthrough_states: tuple[int, ...]  # state parts the step leaves unchanged
    opset: int | None
    checkpoint_sha256: str
    quantization: dict[str, object] | None = None  # how the int8 variant was made; None: fp32

    @property
    def is_int8(self) -> bool:
        return self.quantization is not None

    @property
    def image_size(self) -> int:
        return self.preprocessing.size

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
            # Exports written before "codec" and "preprocessing" existed: a vocabulary and the squash policy.
            codec = data.get("codec") or {"kind": "vocab", "file": data.get("vocab_file", "vocab.json")}
            preprocessing = (
                Preprocessing.from_json(data["preprocessing"])
                if "preprocessing" in data
                else Preprocessing(int(data["image_size"]))
            )
            export = cls(
                out_dir=onnx_dir,
                encoder_path=onnx_dir / data["encoder_file"],
                decoder_path=onnx_dir / data["decoder_file"],
                config_path=path,
                family=str(data["family"]),
                preprocessing=preprocessing,
                tokenization=str(data["tokenization"]),
                codec_kind=str(codec["kind"]),
                codec_path=onnx_dir / str(codec["file"]),
                state_names=tuple(data["state_names"]),
                next_state_names=tuple(data["next_state_names"]),
                passthrough_states=tuple(int(i) for i in data["passthrough_states"]),
                opset=data.get("opset"),
                checkpoint_sha256=str(data["checkpoint"]["weights_sha256"]),
                quantization=dict(data["quantization"]) if data.get("quantization") else None,
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
        for file in (export.encoder_path, export.decoder_path, export.codec_path):
            if not file.exists():
                raise NotFoundError(f"ONNX export {onnx_dir} is incomplete: {file.name} is missing; export again")
        return export


def int8_export_dir(onnx_dir: Path) -> Path:
    """The int8 variant of export ``onnx_dir``: ``<onnx_dir>/int8``, or ``onnx_dir`` itself when it is one.

    (Models exported with ``--quantize int8`` before the int8 engines existed recorded the int8 folder.)
    """
    onnx_dir = Path(onnx_dir)
    config = onnx_dir / CONFIG_FILE
    try:
        if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("quantization"):
            return onnx_dir
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        pass  # OnnxExport.read says what is wrong with it
    return onnx_dir / INT8_SUBDIR


def open_export(artifacts: ModelArtifacts, *, int8: bool = False, engine: str = "onnx") -> OnnxExport:
    """The ONNX export (or its int8 variant) of ``artifacts`` for engine ``engine``; a missing or stale one is refused.

    Stale: made from other weights than the checkpoint's (the model was trained again).
    """
    onnx_dir = artifacts.export_dir(EXPORT_FORMAT)
    folder = int8_export_dir(onnx_dir) if int8 else onnx_dir
    if not folder.is_dir():
        how = "`vicap-jobs export onnx MODEL --quantize int8`" if int8 else "`vicap-jobs export onnx MODEL`"
        raise NotFoundError(f"engine {engine!r} needs {'an int8' if int8 else 'an ONNX'} export at {folder}; run {how}")
    export = OnnxExport.read(folder)
    if int8 and not export.is_int8:
        raise NotFoundError(f"{folder} is not an int8 export; run `vicap-jobs export onnx MODEL --quantize int8`")
    if export.checkpoint_sha256 != weights_sha256(Path(artifacts.checkpoint_dir)):
        raise NotFoundError(  # no usable export: engines/choice.py counts the engine out, like a missing one
            f"ONNX export {folder} was made from other weights than checkpoint {artifacts.checkpoint_dir}; "
            f"run `vicap-jobs export onnx MODEL{' --quantize int8' if int8 else ''}` again"
        )
    return export
