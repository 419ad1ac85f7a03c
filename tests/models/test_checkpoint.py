"""Checkpoints in the safetensors layout: manifest fields, old manifests, the weights digest, clear errors.

The save → load round trip of every family is in test_family_contract.py; the
Hugging Face layout in test_hf_layout.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vicap_jobs.data.images import Preprocessing
from vicap_jobs.data.vocab import Vocabulary
from vicap_jobs.errors import InputError, NotFoundError, UnknownNameError, VicapError
from vicap_jobs.models.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from vicap_jobs.models.manifest import ModelArtifacts, read_manifest, weights_sha256
from vicap_jobs.models.registry import get_family

WORDS = ["một", "cầu_thủ", "đang", "đá", "bóng", "trên", "sân", "áo", "đỏ", "xanh", "hai", "người"]


def vocabulary() -> Vocabulary:
    return Vocabulary.build([WORDS], tokenization="word")


def tiny(family: str, vocab_size: int, **overrides: object) -> torch.nn.Module:
    spec = get_family(family)
    config = spec.config_cls(backbone="tiny", image_size=32, embed_dim=8, hidden_dim=8, **overrides)
    torch.manual_seed(0)
    return spec.build(config, vocab_size, backbone_weights="random")


def saved(tmp_path: Path, family: str = "cnn-lstm") -> tuple[Path, torch.nn.Module]:
    vocab = vocabulary()
    model = tiny(family, len(vocab))
    with torch.no_grad():  # make the BatchNorm buffers differ from a fresh init, so they must round-trip
        model.backbone.features[1].running_mean.uniform_()
    out = save_checkpoint(
        tmp_path / "ckpt", model=model, family=family, codec=vocab, meta={"epochs": 3, "dataset": "synth"}
    )
    return out, model


@pytest.mark.parametrize("family", ["cnn-lstm", "cnn-lstm-attn"])
def test_layout_files_and_round_trip(family: str, tmp_path: Path) -> None:
    path, model = saved(tmp_path, family)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "vocab.json"]
    loaded = load_checkpoint(path)
    assert isinstance(loaded, LoadedCheckpoint) and loaded.path == path
    assert not loaded.model.training and type(loaded.model) is type(model)
    assert loaded.model.config == model.config and loaded.codec.tokens == vocabulary().tokens
    assert loaded.preprocessing == Preprocessing(32)
    pixels, tokens = torch.randn(2, 3, 32, 32), torch.tensor([[1, 5, 6, 7], [1, 8, 0, 0]])
    model.eval()
    with torch.no_grad():
        expected = model(model.extract_features(pixels), tokens)
        got = loaded.model(loaded.model.extract_features(pixels), tokens)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_manifest_fields(tmp_path: Path) -> None:
    path, model = saved(tmp_path)
    manifest = load_checkpoint(path).manifest
    assert manifest == json.loads((path / "config.json").read_text(encoding="utf-8"))
    assert manifest["format_version"] == 1 and manifest["family"] == "cnn-lstm"
    assert manifest["config"]["vocab_size"] == len(vocabulary()) and manifest["config"]["num_layers"] == 1
    assert manifest["backbone"] == "tiny" and manifest["image_size"] == 32 and manifest["backbone_frozen"] is True
    assert manifest["tokenization"] == "word" and manifest["vocab_file"] == "vocab.json"
    assert manifest["weights_file"] == "model.safetensors" and manifest["layout"] == "safetensors"
    assert manifest["codec"] == {"kind": "vocab", "file": "vocab.json"}
    assert manifest["preprocessing"] == {
        "size": 32,
        "resize": "squash",
        "resample": "bicubic",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert set(manifest["versions"]) >= {"torch", "torchvision", "vicap_jobs"}
    assert manifest["versions"]["torch"] == torch.__version__
    assert "git_commit" in manifest and manifest["meta"] == {"epochs": 3, "dataset": "synth"}


def test_manifests_written_before_layout_codec_and_preprocessing_still_load(tmp_path: Path) -> None:
    """A checkpoint of the earlier code: the same files, a manifest without the newer fields."""
    path, model = saved(tmp_path)
    manifest = json.loads((path / "config.json").read_text(encoding="utf-8"))
    for key in ("layout", "codec", "preprocessing"):
        del manifest[key]
    (path / "config.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    loaded = load_checkpoint(path)
    assert loaded.preprocessing == Preprocessing(32) and loaded.codec.tokens == vocabulary().tokens
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.extract_features(pixels), model.eval().extract_features(pixels))


def test_weights_digest_is_the_safetensors_file_digest(tmp_path: Path) -> None:
    """Exports made so far recorded sha256(model.safetensors): the digest must not change for this layout."""
    path, _ = saved(tmp_path)
    assert weights_sha256(path) == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    other, _ = saved(tmp_path / "other", "cnn-lstm-attn")
    assert weights_sha256(other) != weights_sha256(path)


def test_reading_a_manifest_needs_no_torch(tmp_path: Path) -> None:
    path, _ = saved(tmp_path)
    code = (
        "import sys; from pathlib import Path\n"
        "from vicap_jobs.models.manifest import read_manifest, weights_sha256, manifest_preprocessing\n"
        f"m = read_manifest(Path({str(path)!r})); weights_sha256(Path({str(path)!r})); manifest_preprocessing(m)\n"
        "print(m['family'], 'torch' in sys.modules, 'safetensors' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["cnn-lstm", "False", "False"]


def test_model_artifacts_default_export_folders(tmp_path: Path) -> None:
    artifacts = ModelArtifacts(tmp_path / "ckpt")
    assert artifacts.export_dir("onnx") == tmp_path / "ckpt" / "onnx"
    moved = ModelArtifacts(tmp_path / "ckpt", exports={"onnx": tmp_path / "onnx" / "int8"})
    assert moved.export_dir("onnx") == tmp_path / "onnx" / "int8"
    assert read_manifest(saved(tmp_path)[0])["family"] == "cnn-lstm"


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = saved(tmp_path)
    assert not list(path.glob("*.pt")) + list(path.glob("*.pth")) + list(path.glob("*.pkl"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_checkpoint must not call torch.load")

    monkeypatch.setattr(torch, "load", refuse)
    load_checkpoint(path)


def test_loading_needs_no_pretrained_backbone_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vocab = vocabulary()
    spec = get_family("cnn-lstm-attn")
    config = spec.config_cls(backbone="efficientnet_v2_s", image_size=32, embed_dim=8, hidden_dim=8, attention_dim=8)
    model = spec.build(config, len(vocab), backbone_weights="random")
    path = save_checkpoint(tmp_path / "effnet", model=model, family="cnn-lstm-attn", codec=vocab, meta={})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    assert load_checkpoint(path).manifest["backbone"] == "efficientnet_v2_s"


def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    for name in ("config.json", "vocab.json", "model.safetensors"):
        path, _ = saved(tmp_path / name)
        (path / name).unlink()
        with pytest.raises(NotFoundError, match=str(path)):
            load_checkpoint(path)


def test_garbled_files_name_the_path(tmp_path: Path) -> None:
    path, _ = saved(tmp_path / "weights")
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="model.safetensors"):
        load_checkpoint(path)

    path, _ = saved(tmp_path / "manifest")
    (path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="config.json"):
        load_checkpoint(path)

    path, _ = saved(tmp_path / "vocab")
    (path / "vocab.json").write_text("[]", encoding="utf-8")
    with pytest.raises(InputError, match="vocab.json"):
        load_checkpoint(path)


def test_manifest_that_does_not_fit(tmp_path: Path) -> None:
    path, _ = saved(tmp_path / "shape")
    manifest = json.loads((path / "config.json").read_text(encoding="utf-8"))
    manifest["config"]["hidden_dim"] = 12  # weights were saved for 8
    (path / "config.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(InputError, match="model.safetensors"):
        load_checkpoint(path)

    manifest["config"]["hidden_dim"], manifest["config"]["colour"] = 8, "red"
    (path / "config.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(InputError, match="colour"):
        load_checkpoint(path)

    manifest["family"] = "resnet-gpt"
    (path / "config.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(UnknownNameError, match="cnn-lstm"):
        load_checkpoint(path)

    del manifest["config"]["colour"]
    manifest["family"], manifest["layout"] = "cnn-lstm", "pickle"
    (path / "config.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(InputError, match="layout 'pickle'"):
        load_checkpoint(path)

    manifest["layout"], manifest["codec"] = "safetensors", {"kind": "sentencepiece", "file": "vocab.json"}
    (path / "config.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(UnknownNameError, match="vocab"):
        load_checkpoint(path)

    manifest["codec"], manifest["preprocessing"] = {"kind": "vocab", "file": "vocab.json"}, {"size": 0}
    (path / "config.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(InputError, match="size"):
        load_checkpoint(path)

    manifest["format_version"] = 99
    (path / "config.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(InputError, match="format_version"):
        load_checkpoint(path)


def test_save_refuses_a_vocabulary_of_another_size(tmp_path: Path) -> None:
    with pytest.raises(VicapError, match="vocabulary"):
        save_checkpoint(tmp_path, model=tiny("cnn-lstm", 30), family="cnn-lstm", codec=vocabulary(), meta={})
    with pytest.raises(UnknownNameError, match="cnn-lstm"):
        save_checkpoint(tmp_path, model=tiny("cnn-lstm", 16), family="no-such-family", codec=vocabulary(), meta={})
    assert not any(tmp_path.iterdir())  # nothing written before the checks
