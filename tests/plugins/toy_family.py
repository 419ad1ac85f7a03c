"""A throw-away model family, registered the way a plugin registers one (``VICAP_PLUGINS=tests.plugins.toy_family``).

``toy-colour`` names the dominant colour of a photo in Vietnamese: the mean RGB of the image
(preprocessed by its own policy: 8×8, no normalization) is matched to the nearest of a few colour
prototypes, the model's only weights. It brings its own config, its own text codec (one id per
character) and its own engine (no step-wise decoder, no beam search), and nothing in ``src/``
knows about it: the family registry, checkpoint layout, codec registry, engine lookup, job system
and worker pick it up.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vicap_jobs.data.images import Preprocessing
from vicap_jobs.engines.base import CaptionEngine, DecodeOptions
from vicap_jobs.errors import InputError
from vicap_jobs.models.checkpoint import SafetensorsLayout, load_checkpoint
from vicap_jobs.models.codec import register_codec
from vicap_jobs.models.manifest import ModelArtifacts
from vicap_jobs.models.registry import FamilySpec, ModelFamily, register_family

NAME = "toy-colour"
COLOURS: dict[str, tuple[float, float, float]] = {
    "một bức ảnh màu đỏ": (1.0, 0.0, 0.0),
    "một bức ảnh màu xanh lá": (0.0, 1.0, 0.0),
    "một bức ảnh màu xanh dương": (0.0, 0.0, 1.0),
    "một bức ảnh màu vàng": (1.0, 1.0, 0.0),
}


@dataclass
class ToyColourConfig:
    """The family's config: how many colours it knows and the side of its input."""

    n_colours: int = len(COLOURS)
    image_size: int = 8

    def validate(self) -> None:
        if not 1 <= self.n_colours <= len(COLOURS) or self.image_size < 1:
            raise InputError(f"toy-colour knows 1..{len(COLOURS)} colours at a positive size")


class CharCodec:
    """Its own text codec: one id per character of an alphabet, after PAD, BOS and EOS."""

    kind = "toy-chars"
    tokenization = "syllable"
    pad_id, bos_id, eos_id = 0, 1, 2
    banned_ids = (0, 1)
    FILE = "chars.json"

    def __init__(self, alphabet: str) -> None:
        self.alphabet = "".join(sorted(set(alphabet)))
        self._ids = {char: index + 3 for index, char in enumerate(self.alphabet)}

    def __len__(self) -> int:
        return len(self.alphabet) + 3

    def encode_caption(self, caption: str, *, max_len: int | None = None) -> list[int]:
        ids = [self._ids[char] for char in unicodedata.normalize("NFC", caption)]
        if max_len is not None:
            ids = ids[: max_len - 2]
        return [self.bos_id, *ids, self.eos_id]

    def decode_caption(self, ids: Iterable[int]) -> str:
        chars = []
        for index in ids:
            if index == self.eos_id:
                break
            if index >= 3:
                chars.append(self.alphabet[index - 3])
        return unicodedata.normalize("NFC", "".join(chars))

    def save_codec(self, folder: Path) -> str:
        (Path(folder) / self.FILE).write_text(json.dumps({"alphabet": self.alphabet}, ensure_ascii=False))
        return self.FILE

    @classmethod
    def load(cls, path: Path) -> CharCodec:
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["alphabet"])


class ToyColourModel(nn.Module):
    """mean colour (B, 3) → index of the nearest prototype (B,)."""

    def __init__(self, config: ToyColourConfig) -> None:
        super().__init__()
        self.config = config
        self.prototypes = nn.Parameter(torch.tensor(list(COLOURS.values())[: config.n_colours]))  # (K, 3)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = pixels.mean(dim=(2, 3))  # (B, 3)
        return torch.cdist(mean, self.prototypes).argmin(dim=1)  # (B,)


class ToyColourEngine(CaptionEngine):
    """Its own engine: one forward pass, the caption of the nearest colour; no step-wise decoding."""

    name = "toy"

    def __init__(
        self, model: ToyColourModel, codec: CharCodec, preprocessing: Preprocessing, decode: DecodeOptions | None
    ) -> None:
        super().__init__(codec=codec, preprocessing=preprocessing, device="cpu", decode=decode)
        self.model = model
        self.captions = list(COLOURS)[: model.config.n_colours]

    @classmethod
    def load(
        cls,
        artifacts: ModelArtifacts,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> ToyColourEngine:
        loaded = load_checkpoint(artifacts.checkpoint_dir)
        assert isinstance(loaded.codec, CharCodec)
        return cls(loaded.model, loaded.codec, loaded.preprocessing, decode=decode)

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray) -> list[list[int]]:
        nearest = self.model(torch.from_numpy(pixels)).tolist()
        return [self.codec.encode_caption(self.captions[i])[1:-1] for i in nearest]


def build(config: ToyColourConfig) -> ToyColourModel:
    config.validate()
    return ToyColourModel(config)


def preprocessing(config: ToyColourConfig) -> Preprocessing:
    return Preprocessing(size=config.image_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resample="bilinear")


def codec() -> CharCodec:
    """The codec a new toy-colour model is saved with."""
    return CharCodec("".join(COLOURS))


register_codec(CharCodec.kind, f"{__name__}:CharCodec")
FAMILY = ModelFamily(
    config_cls=ToyColourConfig,
    build=build,
    layout=SafetensorsLayout(build),
    codec=CharCodec.kind,
    preprocessing=preprocessing,
)
register_family(
    FamilySpec(NAME, __name__, "names the dominant colour (a test plugin)", {"toy": f"{__name__}:ToyColourEngine"})
)


def save_toy_checkpoint(out_dir: Path) -> Path:
    """A toy-colour checkpoint written through the code users run (the family's layout, codec, manifest)."""
    from vicap_jobs.models.checkpoint import save_checkpoint

    return save_checkpoint(Path(out_dir), model=build(ToyColourConfig()), family=NAME, codec=codec(), meta={})
