"""viic-synth: a small, learnable synthetic stand-in for UIT-ViIC.

No real photos live on this machine, so end-to-end tests and the demo train on
drawn sports scenes instead: five sports, one to three players in one shirt colour,
and a ball in the left, middle or right third. Each image gets five true Vietnamese
captions in UIT-ViIC's style and the COCO captions JSON layout UIT-ViIC uses, so
every reader, trainer and scorer runs on it unchanged. `caption_mentions` checks
that a caption (ours or a model's) names what the image really shows.

Everything is drawn from one seed (no global RNG): the same seed gives byte-identical
JSON and identical pixels.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PIL import Image

from vicap_jobs.data.synth_scenes import (
    ATTRIBUTE_VALUES,
    BALL_POSITIONS,
    PLAYER_COUNTS,
    SHIRTS,
    SPORTS,
    SceneAttributes,
    render_scene,
)
from vicap_jobs.data.text import normalize
from vicap_jobs.errors import InputError, UnknownNameError

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.70, "val": 0.24, "test": 0.06}  # as UIT-ViIC
CAPTIONS_PER_IMAGE = 5
JPEG_QUALITY = 90
MIN_SIZE = 32

T = TypeVar("T")

_FORMATS: dict[str, tuple[str, str]] = {"jpg": ("JPEG", ".jpg"), "png": ("PNG", ".png")}


@dataclass(frozen=True)
class SynthDataset:
    """Where a generated set lives: per split, its COCO captions JSON and its image folder."""

    out_dir: Path
    annotations: dict[str, Path]
    image_dirs: dict[str, Path]
    counts: dict[str, int]
    captions_per_image: int = CAPTIONS_PER_IMAGE

    @property
    def n_images(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------- generation


def generate_synth(
    out_dir: Path,
    *,
    n_images: int,
    seed: int,
    size: int = 224,
    image_format: str = "jpg",
    overwrite: bool = False,
) -> SynthDataset:
    """Write `n_images` scenes and their captions under `out_dir`, split ~70/24/6.

    Layout: images/{train,val,test}/NNNNNN.jpg and annotations/captions_{split}.json
    (COCO captions: images[] with id, file_name, height, width, attributes;
    annotations[] with id, image_id, caption). Image and caption ids are unique
    across splits. Annotations are written last, so a crashed run leaves no JSON.
    An existing set is only replaced with overwrite=True.
    """
    if image_format not in _FORMATS:
        raise UnknownNameError("image format", image_format, tuple(_FORMATS))
    if n_images < len(SPLITS):
        raise InputError(f"n_images must be at least {len(SPLITS)} (one per split), got {n_images}")
    if size < MIN_SIZE:
        raise InputError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite=overwrite)

    master = random.Random(seed)
    scenes = _balanced_attributes(n_images, master)
    image_seeds = [master.getrandbits(63) for _ in range(n_images)]
    counts = _split_counts(n_images)
    pil_format, suffix = _FORMATS[image_format]

    annotations: dict[str, Path] = {}
    image_dirs: dict[str, Path] = {}
    start = 0
    for split in SPLITS:
        stop = start + counts[split]
        image_dir = out_dir / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        ids = range(start + 1, stop + 1)
        coco = _write_split(image_dir, ids, scenes[start:stop], image_seeds[start:stop], size, pil_format, suffix)
        coco["info"] = {"description": "viic-synth: synthetic Vietnamese sports captions", "seed": seed, "split": split}
        annotations[split] = _write_json(out_dir / "annotations" / f"captions_{split}.json", coco)
        image_dirs[split] = image_dir
        start = stop
    return SynthDataset(out_dir=out_dir, annotations=annotations, image_dirs=image_dirs, counts=counts)


def _prepare_out_dir(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse to mix with an earlier set unless asked; then remove only our two sub-folders."""
    ours = [out_dir / "images", out_dir / "annotations"]
    existing = [p for p in ours if p.exists()]
    if existing and not overwrite:
        raise InputError(f"{out_dir} already holds a data set ({existing[0].name}/); pass --overwrite to replace it")
    for path in existing:
        shutil.rmtree(path)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)


def _split_counts(n_images: int) -> dict[str, int]:
    """Images per split at SPLIT_FRACTIONS, at least one in each."""
    n_val = max(1, round(n_images * SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(n_images * SPLIT_FRACTIONS["test"]))
    return {"train": n_images - n_val - n_test, "val": n_val, "test": n_test}


def _balanced_attributes(n_images: int, rng: random.Random) -> list[SceneAttributes]:
    """Each attribute takes each of its values equally often (±1), shuffled independently."""
    sports = _balanced_column(SPORTS, n_images, rng)
    players = _balanced_column(PLAYER_COUNTS, n_images, rng)
    shirts = _balanced_column(SHIRTS, n_images, rng)
    balls = _balanced_column(BALL_POSITIONS, n_images, rng)
    return [SceneAttributes(*row) for row in zip(sports, players, shirts, balls, strict=True)]


def _balanced_column(values: Sequence[T], n_images: int, rng: random.Random) -> list[T]:
    column = [values[i % len(values)] for i in range(n_images)]
    rng.shuffle(column)
    return column


def _write_split(
    image_dir: Path,
    ids: Sequence[int],
    scenes: Sequence[SceneAttributes],
    image_seeds: Sequence[int],
    size: int,
    pil_format: str,
    suffix: str,
) -> dict[str, object]:
    """Draw and save one split's images; return its COCO dict (images and annotations)."""
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for image_id, attrs, image_seed in zip(ids, scenes, image_seeds, strict=True):
        file_name = f"{image_id:06d}{suffix}"
        image = render_scene(attrs, size=size, seed=image_seed)
        _save_image(image, image_dir / file_name, pil_format)
        images.append(
            {"id": image_id, "file_name": file_name, "height": size, "width": size, "attributes": attrs.as_json()}
        )
        captions = make_captions(attrs, random.Random(f"{image_seed}:captions"))
        first_id = (image_id - 1) * CAPTIONS_PER_IMAGE + 1
        annotations.extend(
            {"id": first_id + k, "image_id": image_id, "caption": caption} for k, caption in enumerate(captions)
        )
    return {"images": images, "annotations": annotations}


def _save_image(image: Image.Image, path: Path, pil_format: str) -> None:
    if pil_format == "JPEG":
        image.save(path, "JPEG", quality=JPEG_QUALITY)
    else:
        image.save(path, pil_format)


def _write_json(path: Path, data: dict[str, object]) -> Path:
    """UTF-8 JSON with Vietnamese left readable (no \\u escapes); stable bytes for a seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = {"info": data["info"], "images": data["images"], "annotations": data["annotations"]}
    path.write_text(json.dumps(ordered, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- captions

_NUMBER_WORDS: dict[int, str] = {1: "một", 2: "hai", 3: "ba"}
_PEOPLE = ("cầu thủ", "vận động viên", "người")
_ATHLETES = ("cầu thủ", "vận động viên")  # the ones that read well before a sport name
_SPORT_NAMES: dict[str, tuple[str, ...]] = {
    "bóng đá": ("bóng đá",),
    "quần vợt": ("quần vợt", "tennis"),
    "bóng rổ": ("bóng rổ",),
    "bóng chày": ("bóng chày",),
    "bóng chuyền": ("bóng chuyền",),
}
_SPORT_VERBS: dict[str, tuple[str, ...]] = {  # whole verb phrases that also name the sport
    "bóng đá": ("đang đá bóng",),
    "quần vợt": ("đang đánh quần vợt", "đang đánh tennis"),
    "bóng rổ": (),
    "bóng chày": (),
    "bóng chuyền": (),
}
_COURTS: dict[str, tuple[str, ...]] = {
    "bóng đá": ("sân cỏ", "sân bóng", "sân bóng đá"),
    "quần vợt": ("sân quần vợt", "sân tennis", "sân"),
    "bóng rổ": ("sân bóng rổ", "sàn gỗ", "sân"),
    "bóng chày": ("sân bóng chày", "sân"),
    "bóng chuyền": ("bãi cát", "sân cát", "bãi biển"),
}
_BALLS: dict[str, tuple[str, ...]] = {
    "bóng đá": ("quả bóng", "quả banh", "trái bóng"),
    "quần vợt": ("quả bóng", "quả banh", "quả bóng tennis"),
    "bóng rổ": ("quả bóng", "quả banh", "quả bóng rổ"),
    "bóng chày": ("quả bóng", "quả banh", "quả bóng chày"),
    "bóng chuyền": ("quả bóng", "quả banh", "quả bóng chuyền"),
}
_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "bên trái": ("ở bên trái", "nằm ở bên trái", "ở phía bên trái"),
    "ở giữa": ("ở giữa", "nằm ở giữa", "ở chính giữa"),
    "bên phải": ("ở bên phải", "nằm ở bên phải", "ở phía bên phải"),
}
# {np}: counted players ("hai cầu thủ"); {group}: uncounted ("các cầu thủ"); {play}:
# verb phrase naming the sport; {act}: verb phrase after "<athlete> <sport>".
_TEMPLATES: tuple[str, ...] = (
    "{np} mặc {shirt} {play} trên {court}.",
    "{np_athlete} {sport} mặc {shirt} {act} trên {court}.",
    "Trên {court}, {np} mặc {shirt} {play}, {ball} {pos}.",
    "{np} mặc {shirt} {play}, {ball} {pos}.",
    "{group} mặc {shirt} {play} trên {court}.",
    "Hình ảnh {np} mặc {shirt} {play}.",
    "{ball} {pos} trong khi {np} mặc {shirt} {play}.",
    "{group} {sport} mặc {shirt} {act} trên {court}.",
)


def make_captions(attrs: SceneAttributes, rng: random.Random) -> list[str]:
    """CAPTIONS_PER_IMAGE different true captions, each from a different template.

    All name the sport and the shirt colour; at most two of eight templates omit the
    player count and three of eight give the ball's position.
    """
    templates = rng.sample(_TEMPLATES, CAPTIONS_PER_IMAGE)
    return [_sentence(template.format(**_slots(attrs, rng))) for template in templates]


def _slots(attrs: SceneAttributes, rng: random.Random) -> dict[str, str]:
    """Fill every template slot with a randomly chosen, true phrasing."""
    number = _NUMBER_WORDS[attrs.players]
    sport = rng.choice(_SPORT_NAMES[attrs.sport])
    athlete = rng.choice(_ATHLETES)
    group = athlete if attrs.players == 1 else f"{rng.choice(('các', 'những'))} {athlete}"
    plays = [f"đang chơi {sport}", f"đang thi đấu {sport}", *_SPORT_VERBS[attrs.sport]]
    return {
        "np": f"{number} {rng.choice(_PEOPLE)}",
        "np_athlete": f"{number} {athlete}",
        "group": group,
        "sport": sport,
        "play": rng.choice(plays),
        "act": rng.choice(("đang thi đấu", "đang chơi bóng")),
        "shirt": rng.choice((f"áo {attrs.shirt}", f"áo màu {attrs.shirt}")),
        "court": rng.choice(_COURTS[attrs.sport]),
        "ball": rng.choice(_BALLS[attrs.sport]),
        "pos": rng.choice(_POSITION_PHRASES[attrs.ball]),
    }


def _sentence(text: str) -> str:
    """Sentence case, as UIT-ViIC writes captions (the final period is in the template)."""
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------- checking captions

_SPORT_MATCH: dict[str, tuple[str, ...]] = {
    "bóng đá": ("bóng đá", "đá bóng", "đá banh"),
    "quần vợt": ("quần vợt", "tennis", "tay vợt"),
    "bóng rổ": ("bóng rổ",),
    "bóng chày": ("bóng chày",),
    "bóng chuyền": ("bóng chuyền",),
}
_COUNT_MATCH: dict[str, int] = {
    "một": 1, "hai": 2, "ba": 3, "bốn": 4, "năm": 5, "sáu": 6,
    "1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "6": 6,
}  # fmt: skip
_PERSON_MATCH = ("cầu thủ", "vận động viên", "tay vợt", "người", "cậu bé", "cô gái", "đứa trẻ", "chàng trai")
_GENDER_WORDS = ("nam", "nữ")
_POSITION_MATCH: dict[str, tuple[str, ...]] = {
    "bên trái": ("bên trái", "phía trái"),
    "ở giữa": ("ở giữa", "chính giữa"),
    "bên phải": ("bên phải", "phía phải"),
}


def caption_mentions(caption: str, attributes: dict[str, object]) -> dict[str, bool]:
    """Which true attributes a caption names: {"sport", "shirt", "players", "ball"} → bool.

    Matching runs on normalized text (NFC, lowercase, no punctuation) and accepts the
    synonyms our captions use plus a few a model may produce. A colour counts only
    after "áo" ("áo đỏ", "áo màu đỏ"), a count only before a person ("hai cầu thủ").
    """
    tokens = normalize(caption).split()
    text = f" {' '.join(tokens)} "
    return {
        "sport": _has_phrase(text, _SPORT_MATCH.get(str(attributes["sport"]), ())),
        "shirt": str(attributes["shirt"]) in _shirt_colours(tokens),
        "players": attributes["players"] in _player_counts(tokens),
        "ball": _has_phrase(text, _POSITION_MATCH.get(str(attributes["ball"]), ())),
    }


def _has_phrase(padded_text: str, phrases: Sequence[str]) -> bool:
    """Whole-word phrase match in normalized text padded with spaces."""
    return any(f" {phrase} " in padded_text for phrase in phrases)


def _shirt_colours(tokens: Sequence[str]) -> set[str]:
    """Colours named right after "áo", optionally via "màu"."""
    colours = set()
    for i, token in enumerate(tokens[:-1]):
        if token != "áo":
            continue
        following = tokens[i + 2] if tokens[i + 1] == "màu" and i + 2 < len(tokens) else tokens[i + 1]
        colours.add(following)
    return colours


def _player_counts(tokens: Sequence[str]) -> set[int]:
    """Numbers written directly before a person noun ("ba vận động viên", "hai nữ cầu thủ")."""
    counts = set()
    for i, token in enumerate(tokens):
        if token not in _COUNT_MATCH:
            continue
        rest = list(tokens[i + 1 : i + 5])
        if rest and rest[0] in _GENDER_WORDS:
            rest = rest[1:]
        phrase = f"{' '.join(rest)} "
        if any(phrase.startswith(f"{noun} ") for noun in _PERSON_MATCH):
            counts.add(_COUNT_MATCH[token])
    return counts


__all__ = [
    "ATTRIBUTE_VALUES",
    "BALL_POSITIONS",
    "CAPTIONS_PER_IMAGE",
    "PLAYER_COUNTS",
    "SHIRTS",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "SPORTS",
    "SceneAttributes",
    "SynthDataset",
    "caption_mentions",
    "generate_synth",
    "make_captions",
    "render_scene",
]
