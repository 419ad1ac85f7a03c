"""What a checkpoint folder is, readable without torch: the manifest, the weights digest, ModelArtifacts.

Every checkpoint folder has our manifest, ``config.json``: format version, family,
the family's config dataclass fields, checkpoint ``layout``, text ``codec`` (kind and
file), ``preprocessing``, tokenization, provenance (versions, git commit) and the
trainer's ``meta``. Two layouts (written by ``models.checkpoint``):

- ``safetensors`` (CNN+LSTM): ``model.safetensors`` + ``vocab.json`` beside the manifest.
- ``hf`` (Hugging Face families): ``hf/`` holds ``save_pretrained`` output (model
  config and weights, tokenizer, preprocessor config); ``adapter/`` an optional peft
  adapter (``adapter_config.json`` + weights).

Manifests written before ``layout``, ``codec`` and ``preprocessing`` existed are the
safetensors layout with ``vocab_file`` and the squash/ImageNet policy at ``image_size``:
every existing checkpoint still loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from vicap_jobs.data.images import Preprocessing
from vicap_jobs.errors import InputError, NotFoundError

FORMAT_VERSION = 1
MANIFEST_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"  # safetensors layout
VOCAB_FILE = "vocab.json"  # the vocab codec's file
HF_DIR = "hf"  # hf layout: save_pretrained output of the model (its tokenizer is the codec folder)
ADAPTER_DIR = "adapter"  # hf layout: optional peft adapter
LAYOUTS = ("safetensors", "hf")


@dataclass(frozen=True)
class ModelArtifacts:
    """Where a model's files are: its checkpoint folder and its export folders by format.

    exports["onnx"] is the ONNX folder recorded on the models row; a format without
    an entry defaults to ``<checkpoint>/<format>`` (``vicap-jobs export``'s default).
    """

    checkpoint_dir: Path
    exports: Mapping[str, Path] = field(default_factory=dict)

    def export_dir(self, fmt: str) -> Path:
        """The folder of export format ``fmt`` (given, or the default inside the checkpoint)."""
        given = self.exports.get(fmt)
        return Path(given) if given is not None else default_export_dir(self.checkpoint_dir, fmt)


def default_export_dir(checkpoint_dir: Path, fmt: str) -> Path:
    """Where ``vicap-jobs export`` writes format ``fmt`` by default: ``<checkpoint>/<fmt>``."""
    return Path(checkpoint_dir) / fmt


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
    if manifest_layout(manifest) not in LAYOUTS:
        raise InputError(
            f"checkpoint manifest {manifest_path} has layout {manifest.get('layout')!r}; "
            f"this code reads {', '.join(LAYOUTS)}"
        )
    return manifest


def write_manifest(out_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``config.json`` (UTF-8, diacritics readable)."""
    text = json.dumps(dict(manifest), ensure_ascii=False, indent=1)
    (Path(out_dir) / MANIFEST_FILE).write_text(text, encoding="utf-8")


def manifest_layout(manifest: Mapping[str, Any]) -> str:
    """The checkpoint layout ("safetensors" when the manifest predates the field)."""
    return str(manifest.get("layout", "safetensors"))


def manifest_codec(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """(codec kind, file name in the checkpoint folder); older manifests: ("vocab", their vocab_file)."""
    codec = manifest.get("codec")
    if codec is None:
        return "vocab", str(manifest.get("vocab_file", VOCAB_FILE))
    if not isinstance(codec, dict) or not isinstance(codec.get("kind"), str) or not isinstance(codec.get("file"), str):
        raise InputError(f"checkpoint manifest codec entry must be {{'kind': ..., 'file': ...}}, got {codec!r}")
    return codec["kind"], codec["file"]


def manifest_preprocessing(manifest: Mapping[str, Any]) -> Preprocessing:
    """The preprocessing policy; older manifests get squash + ImageNet statistics at their image size."""
    if "preprocessing" in manifest:
        return Preprocessing.from_json(manifest["preprocessing"])
    size = manifest.get("image_size") or manifest.get("config", {}).get("image_size")
    if not isinstance(size, int):
        raise InputError("checkpoint manifest has neither 'preprocessing' nor an integer 'image_size'")
    return Preprocessing(size)


def weight_files(path: Path, manifest: Mapping[str, Any]) -> list[Path]:
    """The files holding the weights, in digest order (the hf layout: every file of hf/ and adapter/)."""
    path = Path(path)
    if manifest_layout(manifest) == "safetensors":
        return [path / str(manifest.get("weights_file", WEIGHTS_FILE))]
    folders = [path / str(manifest.get("hf_dir", HF_DIR))]
    if manifest.get("adapter_dir"):
        folders.append(path / str(manifest["adapter_dir"]))
    files = [file for folder in folders if folder.is_dir() for file in folder.rglob("*") if file.is_file()]
    if not files:
        raise NotFoundError(f"checkpoint {path} has no weights in {', '.join(f.name + '/' for f in folders)}")
    return sorted(files, key=lambda file: file.relative_to(path).as_posix())


def weights_sha256(checkpoint_dir: Path) -> str:
    """Hex SHA-256 of the checkpoint's weights: ties an export to the exact weights.

    safetensors layout: the digest of ``model.safetensors`` itself (as recorded by every
    export so far). hf layout: of each file's relative path and bytes, in path order.
    """
    checkpoint_dir = Path(checkpoint_dir)
    manifest = read_manifest(checkpoint_dir)
    files = weight_files(checkpoint_dir, manifest)
    digest = hashlib.sha256()
    for path in files:
        if manifest_layout(manifest) != "safetensors":
            digest.update(path.relative_to(checkpoint_dir).as_posix().encode("utf-8") + b"\0")
        try:
            with path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
        except OSError as exc:
            raise NotFoundError(f"cannot read checkpoint weights {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def git_commit() -> str | None:
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


def library_versions(*names: str) -> dict[str, str]:
    """Versions of ``names`` and of vicap-jobs: a loaded module's ``__version__`` (torch's has its CUDA
    build, e.g. ``2.14.1+cu130``), else the installed package's metadata; nothing is imported."""
    versions: dict[str, str] = {}
    for name in (*names, "vicap-jobs"):
        key = name.replace("-", "_")
        loaded = getattr(sys.modules.get(key), "__version__", None)
        if isinstance(loaded, str):
            versions[key] = loaded
            continue
        with contextlib.suppress(PackageNotFoundError):
            versions[key] = version(name)
    return versions
