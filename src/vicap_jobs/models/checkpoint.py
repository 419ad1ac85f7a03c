"""Checkpoints: ``model.safetensors`` + ``config.json`` (manifest) + ``vocab.json`` in one folder.

The manifest holds everything needed to rebuild the model through the family
registry (family name, config dataclass fields) plus provenance: library
versions, git commit, and the trainer's ``meta`` (epochs, val scores, data
set). Weights are safetensors only: loading never unpickles anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vicap_jobs.data.vocab import Vocabulary
from vicap_jobs.errors import InputError, NotFoundError, VicapError
from vicap_jobs.models.registry import get_family

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "config.json"
VOCAB_FILE = "vocab.json"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint folder, in eval mode."""

    model: nn.Module
    vocab: Vocabulary
    manifest: dict[str, Any]
    path: Path


def _git_commit() -> str | None:
    """The commit of the source tree this code runs from, when it is a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import torchvision

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    with contextlib.suppress(PackageNotFoundError):
        versions["vicap_jobs"] = version("vicap-jobs")
    return versions


def save_checkpoint(out_dir: Path, *, model: nn.Module, family: str, vocab: Vocabulary, meta: dict[str, Any]) -> Path:
    """Write weights, manifest and vocabulary into ``out_dir`` (created); return ``out_dir``.

    ``model.config`` must be the family's config dataclass; ``meta`` must be
    JSON-serializable (epochs, val scores, data set name...).
    """
    from safetensors.torch import save_model

    config = model.config
    if not dataclasses.is_dataclass(config):
        raise VicapError(f"model.config must be a config dataclass, got {type(config).__name__}")
    if len(vocab) != config.vocab_size:
        raise VicapError(f"vocabulary has {len(vocab)} tokens but the model was built for {config.vocab_size}")
    get_family(family)  # an unknown family fails before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format_version": FORMAT_VERSION,
        "family": family,
        "config": dataclasses.asdict(config),
        "backbone": getattr(config, "backbone", None),
        "image_size": getattr(config, "image_size", None),
        "backbone_frozen": bool(getattr(model, "backbone_frozen", False)),
        "tokenization": vocab.tokenization,
        "vocab_file": VOCAB_FILE,
        "weights_file": WEIGHTS_FILE,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "meta": meta,
    }
    save_model(model, str(out_dir / WEIGHTS_FILE))
    vocab.save(out_dir / VOCAB_FILE)
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return out_dir


def read_manifest(path: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of checkpoint folder ``path``, checked for the required fields."""
    path = Path(path)
    if not path.is_dir():
        raise NotFoundError(f"checkpoint folder {path} does not exist")
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise NotFoundError(f"checkpoint {path} has no {MANIFEST_FILE}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read checkpoint manifest {manifest_path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise InputError(f"checkpoint manifest {manifest_path} is not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"checkpoint manifest {manifest_path} has format_version {manifest.get('format_version')!r}; "
            f"this code reads {FORMAT_VERSION}"
        )
    for key, kind in (("family", str), ("config", dict)):
        if not isinstance(manifest.get(key), kind):
            raise InputError(f"checkpoint manifest {manifest_path} lacks a valid {key!r} field")
    return manifest


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


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model of checkpoint folder ``path`` through the family registry (eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(path)
    manifest = read_manifest(path)
    spec = get_family(manifest["family"])
    try:
        config = _config_from_dict(spec.config_cls, manifest["config"])
    except (VicapError, TypeError) as exc:
        raise InputError(f"checkpoint manifest {path / MANIFEST_FILE} has a bad config: {exc}") from exc
    vocab_path = path / manifest.get("vocab_file", VOCAB_FILE)
    if not vocab_path.is_file():
        raise NotFoundError(f"checkpoint {path} has no vocabulary file {vocab_path.name}")
    vocab = Vocabulary.load(vocab_path)
    if len(vocab) != config.vocab_size:
        raise InputError(
            f"checkpoint {path}: {vocab_path.name} has {len(vocab)} tokens, config says {config.vocab_size}"
        )
    # Backbone weights come from the checkpoint itself: never look for pretrained files here.
    model = spec.build(config, config.vocab_size, backbone_weights="random")
    weights_path = path / manifest.get("weights_file", WEIGHTS_FILE)
    if not weights_path.is_file():
        raise NotFoundError(f"checkpoint {path} has no weights file {weights_path.name}")
    try:
        load_model(model, str(weights_path), strict=True, device="cpu")
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise InputError(f"cannot load checkpoint weights {weights_path}: {exc}") from exc
    model.to(map_location).eval()
    return LoadedCheckpoint(model=model, vocab=vocab, manifest=manifest, path=path)
