"""Checkpoints: save and load a model with its manifest, text codec and preprocessing, through its family.

``save_checkpoint`` writes the family's weights through its checkpoint layout, the
codec through ``codec.save_codec`` and the manifest (``models.manifest``) last;
``load_checkpoint`` reads the manifest, rebuilds the family's config dataclass,
loads the codec and lets the layout rebuild the model. Two layouts:

- :class:`SafetensorsLayout` (CNN+LSTM): ``model.safetensors``, loaded into a model
  the family builds without looking for any weight file. Loading never unpickles.
- :class:`HFLayout` (Hugging Face families): ``hf/`` is ``save_pretrained`` output,
  ``adapter/`` an optional peft adapter; loading delegates to the family's
  ``from_pretrained``-style callables. Nothing here imports transformers or peft.

This module imports neither torch nor safetensors at import time: the family module
brings torch, the safetensors layout imports safetensors when it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from vicap_jobs.data.images import Preprocessing
from vicap_jobs.errors import InputError, NotFoundError, VicapError, WeightsMissingError
from vicap_jobs.models.codec import TextCodec, load_codec
from vicap_jobs.models.manifest import (
    ADAPTER_DIR,
    FORMAT_VERSION,
    HF_DIR,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    git_commit,
    library_versions,
    manifest_codec,
    manifest_layout,
    manifest_preprocessing,
    read_manifest,
    write_manifest,
)
from vicap_jobs.models.registry import get_family

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint folder (eval mode) with its codec and preprocessing."""

    model: Any  # the family's model (an nn.Module for the torch families)
    codec: TextCodec
    preprocessing: Preprocessing
    manifest: dict[str, Any]
    path: Path


class CheckpointLayout(Protocol):
    """How a family's weights sit in a checkpoint folder."""

    name: ClassVar[str]  # the manifest's "layout"

    def save(self, out_dir: Path, model: Any) -> dict[str, Any]:
        """Write the weights into ``out_dir``; returns the manifest fields naming them."""
        ...

    def load(
        self,
        path: Path,
        manifest: Mapping[str, Any],
        config: Any,
        *,
        map_location: str,
        load_options: Mapping[str, Any] | None = None,
    ) -> Any:
        """Rebuild the model of checkpoint ``path`` for ``config`` on ``map_location``, in eval mode.

        load_options: layout-specific keywords (the hf layout passes them to ``from_pretrained``,
        e.g. a bitsandbytes ``quantization_config``); the safetensors layout takes none.
        """
        ...


class SafetensorsLayout:
    """``model.safetensors`` beside the manifest, loaded strictly into ``build_empty(config)``."""

    name: ClassVar[str] = "safetensors"

    def __init__(self, build_empty: Callable[[Any], nn.Module]) -> None:
        """build_empty(config): the model with throw-away weights (never reads pretrained files)."""
        self.build_empty = build_empty

    def save(self, out_dir: Path, model: Any) -> dict[str, Any]:
        from safetensors.torch import save_model  # safetensors.torch imports torch

        save_model(model, str(Path(out_dir) / WEIGHTS_FILE))
        return {"weights_file": WEIGHTS_FILE}

    def load(
        self,
        path: Path,
        manifest: Mapping[str, Any],
        config: Any,
        *,
        map_location: str,
        load_options: Mapping[str, Any] | None = None,
    ) -> nn.Module:
        if load_options:
            raise InputError(f"safetensors checkpoints take no load options, got {sorted(load_options)}")
        from safetensors import SafetensorError  # safetensors.torch imports torch
        from safetensors.torch import load_model

        weights_path = Path(path) / str(manifest.get("weights_file", WEIGHTS_FILE))
        if not weights_path.is_file():
            raise NotFoundError(f"checkpoint {path} has no weights file {weights_path.name}")
        model = self.build_empty(config)
        try:
            load_model(model, str(weights_path), strict=True, device="cpu")
        except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
            raise InputError(f"cannot load checkpoint weights {weights_path}: {exc}") from exc
        return model.to(map_location).eval()


class HFLayout:
    """Hugging Face families: ``hf/`` = ``save_pretrained`` output, ``adapter/`` = optional peft adapter.

    The model object is duck-typed. Saving calls ``model.save_pretrained(hf/)``; a model
    carrying a peft adapter (it has ``peft_config``) saves the adapter with
    ``model.save_pretrained(adapter/)`` and its base model with
    ``model.get_base_model().save_pretrained(hf/)``. The tokenizer lands in ``tokenizer/``
    through the family's codec. Loading calls the family's
    ``load_pretrained(hf_dir, config, **load_options)`` (e.g. a wrapper around a model class's
    ``from_pretrained``; ``load_options`` such as a ``quantization_config``) and, for a
    manifest that names an adapter, ``load_adapter(model, adapter_dir)`` (e.g.
    ``peft.PeftModel.from_pretrained``); the family module imports transformers/peft
    only inside those callables.
    """

    name: ClassVar[str] = "hf"
    REQUIRED_FILE: ClassVar[str] = "config.json"  # what save_pretrained always writes
    ADAPTER_FILE: ClassVar[str] = "adapter_config.json"  # what peft's save_pretrained always writes

    def __init__(
        self, load_pretrained: Callable[..., Any], load_adapter: Callable[[Any, Path], Any] | None = None
    ) -> None:
        """load_pretrained(hf_dir, config, **load_options) -> model; load_adapter(model, adapter_dir) -> model."""
        self.load_pretrained = load_pretrained
        self.load_adapter = load_adapter

    def save(self, out_dir: Path, model: Any) -> dict[str, Any]:
        out_dir = Path(out_dir)
        fields: dict[str, Any] = {"hf_dir": HF_DIR, "adapter_dir": None}
        base = model
        if getattr(model, "peft_config", None) is not None:
            model.save_pretrained(out_dir / ADAPTER_DIR)
            base = model.get_base_model()
            fields["adapter_dir"] = ADAPTER_DIR
        base.save_pretrained(out_dir / HF_DIR)
        return fields

    def load(
        self,
        path: Path,
        manifest: Mapping[str, Any],
        config: Any,
        *,
        map_location: str,
        load_options: Mapping[str, Any] | None = None,
    ) -> Any:
        path = Path(path)
        hf_dir = path / str(manifest.get("hf_dir", HF_DIR))
        if not (hf_dir / self.REQUIRED_FILE).is_file():
            raise NotFoundError(
                f"checkpoint {path} has no {hf_dir.name}/{self.REQUIRED_FILE}: the model's save_pretrained "
                "output is missing; save the checkpoint again with save_checkpoint"
            )
        adapter = manifest.get("adapter_dir")
        adapter_dir = path / str(adapter) if adapter else None
        if adapter_dir is not None and not (adapter_dir / self.ADAPTER_FILE).is_file():
            raise NotFoundError(
                f"checkpoint {path} names a peft adapter but {adapter_dir.name}/{self.ADAPTER_FILE} is missing; "
                "save the checkpoint again with save_checkpoint"
            )
        if adapter_dir is not None and self.load_adapter is None:
            raise WeightsMissingError(
                f"checkpoint {path} holds a peft adapter in {adapter_dir.name}/ but model family "
                f"{manifest['family']!r} loads none; give its HFLayout a load_adapter"
            )
        try:
            model = self.load_pretrained(hf_dir, config, **dict(load_options or {}))
            if adapter_dir is not None and self.load_adapter is not None:
                model = self.load_adapter(model, adapter_dir)
        except VicapError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise InputError(f"cannot load the Hugging Face model in {hf_dir}: {exc}") from exc
        if getattr(model, "keeps_device", False):  # quantized weights placed at load (bitsandbytes) must stay
            return model.eval()
        return model.to(map_location).eval()


def save_checkpoint(
    out_dir: Path,
    *,
    model: Any,
    family: str,
    codec: TextCodec,
    meta: dict[str, Any],
    config: Any = None,
    preprocessing: Preprocessing | None = None,
) -> Path:
    """Write weights (through the family's layout), codec and manifest into ``out_dir`` (created).

    config: the family's config dataclass (default ``model.config``); preprocessing:
    default the family's policy for that config; ``meta`` must be JSON-serializable
    (epochs, val scores, data set name...).
    """
    spec = get_family(family)  # an unknown family fails before anything is written
    family_model = spec.model
    config = model.config if config is None else config
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise VicapError(f"the config must be the family's config dataclass, got {type(config).__name__}")
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and len(codec) != vocab_size:
        raise VicapError(f"vocabulary has {len(codec)} tokens but the model was built for {vocab_size}")
    if codec.kind != family_model.codec:
        raise VicapError(f"model family {family!r} uses a {family_model.codec!r} text codec, got {codec.kind!r}")
    policy = preprocessing or family_model.preprocessing(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = family_model.layout.save(out_dir, model)
    codec_file = codec.save_codec(out_dir)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "family": family,
        "config": dataclasses.asdict(config),
        "backbone": getattr(config, "backbone", None),
        "image_size": policy.size,
        "backbone_frozen": bool(getattr(model, "backbone_frozen", False)),
        "tokenization": codec.tokenization,
        **({"vocab_file": codec_file} if codec.kind == "vocab" else {}),  # what readers before "codec" look for
        **weights,
        "layout": family_model.layout.name,
        "codec": {"kind": codec.kind, "file": codec_file},
        "preprocessing": policy.to_json(),
        "versions": library_versions("torch", "torchvision", "transformers", "peft"),
        "git_commit": git_commit(),
        "meta": meta,
    }
    write_manifest(out_dir, manifest)
    return out_dir


def _config_from_dict(config_cls: type, fields: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from its ``asdict`` form and validate it."""
    known = {field.name for field in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InputError(f"unknown {config_cls.__name__} fields {unknown}")
    config = config_cls(**fields)
    if hasattr(config, "validate"):
        config.validate()
    return config


def load_checkpoint(
    path: Path, *, map_location: str | torch.device = "cpu", load_options: Mapping[str, Any] | None = None
) -> LoadedCheckpoint:
    """Rebuild the model of checkpoint folder ``path`` through its family (eval mode), with codec and preprocessing.

    load_options go to the family's layout (see :meth:`CheckpointLayout.load`).
    """
    path = Path(path)
    manifest = read_manifest(path)
    family_model = get_family(manifest["family"]).model
    try:
        config = _config_from_dict(family_model.config_cls, manifest["config"])
    except (VicapError, TypeError) as exc:
        raise InputError(f"checkpoint manifest {path / MANIFEST_FILE} has a bad config: {exc}") from exc
    layout = manifest_layout(manifest)
    if layout != family_model.layout.name:
        raise InputError(
            f"checkpoint {path} has layout {layout!r}; model family {manifest['family']!r} "
            f"reads {family_model.layout.name!r}"
        )
    kind, codec_file = manifest_codec(manifest)
    codec_path = path / codec_file
    if not codec_path.exists():
        what = "vocabulary file" if kind == "vocab" else f"{kind} text codec"
        raise NotFoundError(f"checkpoint {path} has no {what} {codec_file}")
    codec = load_codec(kind, codec_path)
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and len(codec) != vocab_size:
        raise InputError(f"checkpoint {path}: {codec_file} has {len(codec)} tokens, config says {vocab_size}")
    preprocessing = manifest_preprocessing(manifest)
    model = family_model.layout.load(path, manifest, config, map_location=str(map_location), load_options=load_options)
    return LoadedCheckpoint(model=model, codec=codec, preprocessing=preprocessing, manifest=manifest, path=path)
