"""The ``hf`` checkpoint layout, with a stand-in family: our manifest on top, ``hf/`` save_pretrained output, ``adapter/``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models import fake_hf_family as fake
from vicap_jobs.data.images import CLIP_MEAN, Preprocessing
from vicap_jobs.errors import NotFoundError, WeightsMissingError
from vicap_jobs.models import codec as codec_module
from vicap_jobs.models import registry
from vicap_jobs.models.checkpoint import load_checkpoint, save_checkpoint
from vicap_jobs.models.manifest import weights_sha256


@pytest.fixture(autouse=True)
def fake_family(monkeypatch: pytest.MonkeyPatch) -> None:
    families, codecs = dict(registry.FAMILIES), dict(codec_module.CODECS)
    fake.register(families, codecs)
    monkeypatch.setattr(registry, "FAMILIES", families)
    monkeypatch.setattr(codec_module, "CODECS", codecs)


def tokenizer() -> fake.FakeTokenizerCodec:
    return fake.FakeTokenizerCodec(["một", "cầu", "thủ"])


def save(tmp_path: Path, model: fake.FakePretrained) -> Path:
    return save_checkpoint(
        tmp_path / "ckpt", model=model, family=fake.NAME, codec=tokenizer(), meta={"m": 1}, config=fake.FakeHFConfig()
    )


def test_layout_files_and_manifest(tmp_path: Path) -> None:
    path = save(tmp_path, fake.FakePretrained([1.0, 2.0]))
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert files == [
        "config.json",
        "hf/config.json",
        "hf/model.safetensors",
        "hf/preprocessor_config.json",
        "hf/tokenizer.json",
    ]
    manifest = json.loads((path / "config.json").read_text(encoding="utf-8"))
    assert manifest["family"] == fake.NAME and manifest["layout"] == "hf"
    assert manifest["hf_dir"] == "hf" and manifest["adapter_dir"] is None
    assert manifest["codec"] == {"kind": fake.CODEC, "file": "hf"} and "vocab_file" not in manifest
    assert manifest["config"] == {
        "checkpoint": "Salesforce/blip-image-captioning-base",
        "image_size": 224,
        "lora_rank": 0,
    }
    assert manifest["preprocessing"]["resize"] == "shorter-side-crop"
    assert manifest["preprocessing"]["mean"] == list(CLIP_MEAN)


def test_round_trip_delegates_to_the_family(tmp_path: Path) -> None:
    path = save(tmp_path, fake.FakePretrained([1.0, 2.0]))
    loaded = load_checkpoint(path, map_location="cuda:1")
    assert isinstance(loaded.model, fake.FakePretrained) and not isinstance(loaded.model, fake.FakePeftModel)
    assert loaded.model.weights == [1.0, 2.0] and loaded.model.device == "cuda:1" and not loaded.model.training
    assert loaded.codec.decode_caption([0, 3, 4, 5, 1, 3]) == "<s> một cầu thủ"
    assert loaded.preprocessing == Preprocessing(224, resize="shorter-side-crop", mean=CLIP_MEAN, std=fake.CLIP_STD)


def test_peft_adapter_goes_to_its_own_folder_and_comes_back(tmp_path: Path) -> None:
    model = fake.FakePeftModel(fake.FakePretrained([1.0, 2.0]), adapter=[0.25])
    path = save(tmp_path, model)
    assert sorted(p.name for p in (path / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((path / "config.json").read_text(encoding="utf-8"))["adapter_dir"] == "adapter"
    assert json.loads((path / "hf" / "model.safetensors").read_text()) == [1.0, 2.0]  # the base model, no adapter
    loaded = load_checkpoint(path)
    assert isinstance(loaded.model, fake.FakePeftModel)
    assert loaded.model.adapter == [0.25] and loaded.model.base.weights == [1.0, 2.0]


def test_weights_digest_covers_model_and_adapter(tmp_path: Path) -> None:
    path = save(tmp_path, fake.FakePeftModel(fake.FakePretrained([1.0]), adapter=[0.25]))
    before = weights_sha256(path)
    assert weights_sha256(path) == before
    (path / "adapter" / "adapter_model.safetensors").write_text("[0.5]")
    assert weights_sha256(path) != before


def test_missing_pieces_say_what_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path / "a", fake.FakePeftModel(fake.FakePretrained([1.0]), adapter=[0.25]))
    (path / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(NotFoundError, match=r"adapter/adapter_config.json is missing; save the checkpoint again"):
        load_checkpoint(path)

    path = save(tmp_path / "b", fake.FakePretrained([1.0]))
    (path / "hf" / "config.json").unlink()
    with pytest.raises(NotFoundError, match=r"no hf/config.json: the model's save_pretrained output is missing"):
        load_checkpoint(path)

    path = save(tmp_path / "c", fake.FakePretrained([1.0]))
    shutil.rmtree(path / "hf")
    with pytest.raises(NotFoundError, match=r"has no fake-tokenizer text codec hf"):
        load_checkpoint(path)

    path = save(tmp_path / "d", fake.FakePeftModel(fake.FakePretrained([1.0]), adapter=[0.25]))
    monkeypatch.setattr(fake, "FAMILY", fake.NO_ADAPTER_FAMILY)
    with pytest.raises(WeightsMissingError, match=r"peft adapter in adapter/ but model family 'fake-hf' loads none"):
        load_checkpoint(path)


def test_the_layout_imports_no_torch_transformers_or_peft(tmp_path: Path) -> None:
    code = f"""
import sys
from pathlib import Path
from tests.models import fake_hf_family as fake
from vicap_jobs.models import codec, registry
from vicap_jobs.models.checkpoint import load_checkpoint, save_checkpoint
fake.register(registry.FAMILIES, codec.CODECS)
model = fake.FakePeftModel(fake.FakePretrained([1.0]), adapter=[0.5])
path = save_checkpoint(Path({str(tmp_path / "ckpt")!r}), model=model, family=fake.NAME,
                       codec=fake.FakeTokenizerCodec(["a"]), meta={{}}, config=fake.FakeHFConfig())
assert load_checkpoint(path).model.adapter == [0.5]
print(sorted(name for name in ("torch", "transformers", "peft", "safetensors") if name in sys.modules))
"""
    root = Path(__file__).resolve().parents[2]  # `tests` importable from the working folder
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
