"""A stand-in Hugging Face family for the ``hf`` checkpoint layout tests: no torch, transformers or peft.

``FakePretrained`` behaves like a transformers model as far as the layout cares
(``save_pretrained`` writes ``config.json`` and weights, ``from_pretrained`` reads
them); ``FakePeftModel`` like a peft model (``peft_config``, ``get_base_model``,
its ``save_pretrained`` writes only the adapter); ``FakeTokenizerCodec`` like the
Hugging Face tokenizer adapter the next families bring (it saves into ``hf/``).
``register(families, codecs)`` adds the family to the registries given.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from vicap_jobs.data.images import CLIP_MEAN, CLIP_STD, Preprocessing
from vicap_jobs.errors import NotFoundError
from vicap_jobs.models.checkpoint import HFLayout
from vicap_jobs.models.registry import FamilySpec, ModelFamily

NAME = "fake-hf"
CODEC = "fake-tokenizer"


@dataclass
class FakeHFConfig:
    checkpoint: str = "Salesforce/blip-image-captioning-base"  # what the real family would start from
    image_size: int = 224
    lora_rank: int = 0


class FakePretrained:
    def __init__(self, weights: list[float]) -> None:
        self.weights = weights
        self.device, self.training = "meta", True

    def save_pretrained(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"model_type": "fake"}))
        (folder / "model.safetensors").write_text(json.dumps(self.weights))
        (folder / "preprocessor_config.json").write_text(json.dumps({"crop_size": 224}))

    @classmethod
    def from_pretrained(cls, folder: Path, config: Any = None, **load_options: Any) -> FakePretrained:
        return cls(json.loads((Path(folder) / "model.safetensors").read_text()))

    def to(self, device: str) -> FakePretrained:
        self.device = device
        return self

    def eval(self) -> FakePretrained:
        self.training = False
        return self


class FakePeftModel(FakePretrained):
    peft_config: ClassVar[dict[str, Any]] = {"default": {"r": 4, "target_modules": ["q", "v"]}}

    def __init__(self, base: FakePretrained, adapter: list[float]) -> None:
        super().__init__(base.weights)
        self.base, self.adapter = base, adapter

    def save_pretrained(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text(json.dumps(self.peft_config["default"]))
        (folder / "adapter_model.safetensors").write_text(json.dumps(self.adapter))

    def get_base_model(self) -> FakePretrained:
        return self.base

    @classmethod
    def with_adapter(cls, base: Any, folder: Path) -> FakePeftModel:
        return cls(base, json.loads((Path(folder) / "adapter_model.safetensors").read_text()))


class FakeTokenizerCodec:
    kind: ClassVar[str] = CODEC
    tokenization: ClassVar[str] = "syllable"
    bos_id, eos_id, pad_id = 0, 1, 2
    banned_ids: ClassVar[tuple[int, ...]] = (0, 2)

    def __init__(self, words: list[str]) -> None:
        self.words = ["<s>", "</s>", "<pad>", *words]

    def __len__(self) -> int:
        return len(self.words)

    def encode_caption(self, caption: str, *, max_len: int | None = None) -> list[int]:
        return [0, *(self.words.index(w) for w in caption.split()), 1][: max_len or None]

    def decode_caption(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            out.append(self.words[i])
        return " ".join(out)

    def save_codec(self, folder: Path) -> str:
        (Path(folder) / "hf").mkdir(parents=True, exist_ok=True)
        (Path(folder) / "hf" / "tokenizer.json").write_text(json.dumps(self.words[3:]), encoding="utf-8")
        return "hf"

    @classmethod
    def load(cls, path: Path) -> FakeTokenizerCodec:
        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise NotFoundError(f"no tokenizer.json in {path}")
        return cls(json.loads(file.read_text(encoding="utf-8")))


def clip_preprocessing(config: FakeHFConfig) -> Preprocessing:
    return Preprocessing(config.image_size, resize="shorter-side-crop", mean=CLIP_MEAN, std=CLIP_STD)


def build(config: FakeHFConfig) -> FakePretrained:
    return FakePretrained([0.5, -1.0, 2.0])


FAMILY = ModelFamily(
    config_cls=FakeHFConfig,
    build=build,
    layout=HFLayout(FakePretrained.from_pretrained, FakePeftModel.with_adapter),
    codec=CODEC,
    preprocessing=clip_preprocessing,
)
NO_ADAPTER_FAMILY = ModelFamily(
    config_cls=FakeHFConfig,
    build=build,
    layout=HFLayout(FakePretrained.from_pretrained),
    codec=CODEC,
    preprocessing=clip_preprocessing,
)


def register(families: MutableMapping[str, FamilySpec], codecs: MutableMapping[str, str]) -> None:
    """Add the fake family (and its codec) to the registries given."""
    families[NAME] = FamilySpec(
        NAME, __name__, "stand-in Hugging Face family", {"hf-generate": f"{__name__}:NoSuchEngine"}
    )
    codecs[CODEC] = f"{__name__}:FakeTokenizerCodec"
