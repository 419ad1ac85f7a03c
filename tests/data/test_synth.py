"""viic-synth: layout, determinism, splits, caption truth and attribute balance."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vicap_jobs.data.synth import (
    ATTRIBUTE_VALUES,
    BALL_POSITIONS,
    CAPTIONS_PER_IMAGE,
    SHIRTS,
    SPLITS,
    SPORTS,
    SceneAttributes,
    SynthDataset,
    caption_mentions,
    generate_synth,
    render_scene,
)
from vicap_jobs.errors import InputError, UnknownNameError

N_IMAGES = 100


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthDataset:
    return generate_synth(tmp_path_factory.mktemp("synth"), n_images=N_IMAGES, seed=7, size=64)


def _load(ds: SynthDataset) -> dict[str, dict]:
    return {split: json.loads(ds.annotations[split].read_text(encoding="utf-8")) for split in SPLITS}


def _captions_by_image(coco: dict) -> dict[int, list[str]]:
    by_image: dict[int, list[str]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    return by_image


def _all_images(ds: SynthDataset) -> list[tuple[dict, list[str]]]:
    out = []
    for coco in _load(ds).values():
        captions = _captions_by_image(coco)
        out.extend((image, captions[image["id"]]) for image in coco["images"])
    return out


def _snapshot(ds: SynthDataset) -> dict[str, bytes]:
    """Every file of a generated set, by relative path."""
    return {p.relative_to(ds.out_dir).as_posix(): p.read_bytes() for p in sorted(ds.out_dir.rglob("*")) if p.is_file()}


def test_layout_matches_uitviic(synth: SynthDataset) -> None:
    for split, coco in _load(synth).items():
        assert synth.annotations[split] == synth.out_dir / "annotations" / f"captions_{split}.json"
        assert synth.image_dirs[split] == synth.out_dir / "images" / split
        assert len(coco["images"]) == synth.counts[split]
        for image in coco["images"]:
            assert {"id", "file_name", "height", "width", "attributes"} <= set(image)
            with Image.open(synth.image_dirs[split] / image["file_name"]) as im:
                assert im.size == (image["width"], image["height"]) == (64, 64)
                assert im.format == "JPEG" and im.mode == "RGB"
        for ann in coco["annotations"]:
            assert set(ann) == {"id", "image_id", "caption"}


def test_ids_are_unique_across_splits(synth: SynthDataset) -> None:
    cocos = _load(synth).values()
    image_ids = [image["id"] for coco in cocos for image in coco["images"]]
    ann_ids = [ann["id"] for coco in cocos for ann in coco["annotations"]]
    assert len(set(image_ids)) == len(image_ids) == N_IMAGES
    assert len(set(ann_ids)) == len(ann_ids) == N_IMAGES * CAPTIONS_PER_IMAGE


def test_split_ratios_follow_uitviic(synth: SynthDataset) -> None:
    assert synth.counts == {"train": 70, "val": 24, "test": 6}
    assert synth.n_images == N_IMAGES


def test_uitviic_sized_split(tmp_path: Path) -> None:
    from vicap_jobs.data.synth import _split_counts

    assert _split_counts(3850) == {"train": 2695, "val": 924, "test": 231}  # UIT-ViIC's own counts
    assert _split_counts(3) == {"train": 1, "val": 1, "test": 1}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    first = _snapshot(generate_synth(tmp_path / "a", n_images=12, seed=3, size=48))
    second = _snapshot(generate_synth(tmp_path / "b", n_images=12, seed=3, size=48))
    other = _snapshot(generate_synth(tmp_path / "c", n_images=12, seed=4, size=48))
    assert first == second
    assert first.keys() == other.keys()
    assert first["annotations/captions_train.json"] != other["annotations/captions_train.json"]
    differing = [name for name in first if name.startswith("images/") and first[name] != other[name]]
    assert len(differing) == 12


def test_every_image_has_five_true_captions(synth: SynthDataset) -> None:
    counts = Counter()
    for image, captions in _all_images(synth):
        attrs = image["attributes"]
        assert len(captions) == CAPTIONS_PER_IMAGE and len(set(captions)) == CAPTIONS_PER_IMAGE
        per_image = Counter()
        for caption in captions:
            mentions = caption_mentions(caption, attrs)
            assert mentions["sport"] and mentions["shirt"], caption
            per_image.update(key for key, hit in mentions.items() if hit)
            _assert_no_false_attribute(caption, attrs)
        assert per_image["players"] >= 3  # most captions give the count
        counts.update(per_image)
    total = N_IMAGES * CAPTIONS_PER_IMAGE
    assert counts["players"] / total >= 0.7
    assert 0.15 <= counts["ball"] / total <= 0.6  # some give the ball's position


def _assert_no_false_attribute(caption: str, attrs: dict) -> None:
    """No other sport, colour, count or position is named anywhere in the caption."""
    for key, values in ATTRIBUTE_VALUES.items():
        for wrong in values:
            if wrong != attrs[key]:
                assert not caption_mentions(caption, {**attrs, key: wrong})[key], (caption, key, wrong)


def test_captions_are_nfc_vietnamese_sentences(synth: SynthDataset) -> None:
    for _, captions in _all_images(synth):
        for caption in captions:
            assert unicodedata.is_normalized("NFC", caption)
            assert caption[0].isupper() and caption.endswith(".") and not caption.endswith(" .")
            assert any(ord(ch) > 127 for ch in caption)  # diacritics present
            assert "  " not in caption and "{" not in caption


def test_raw_json_keeps_vietnamese_readable(synth: SynthDataset) -> None:
    raw = synth.annotations["train"].read_text(encoding="utf-8")
    assert "\\u" not in raw and "mặc áo" in raw


def test_attributes_are_balanced(synth: SynthDataset) -> None:
    images = [image for image, _ in _all_images(synth)]
    for key, values in ATTRIBUTE_VALUES.items():
        counts = Counter(image["attributes"][key] for image in images)
        assert set(counts) == set(values)
        assert max(counts.values()) - min(counts.values()) <= 1, (key, counts)


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("Hai cầu thủ áo đỏ đang đá bóng trên sân cỏ xanh.", dict(sport=True, shirt=True, players=True, ball=False)),
        ("hai_cầu_thủ mặc áo_màu đỏ chơi bóng_đá , quả bóng ở bên trái", dict(sport=True, shirt=True, players=True, ball=True)),
        ("Một quả bóng đá trên sân cỏ xanh.", dict(sport=True, shirt=False, players=False, ball=False)),
        ("Ba người mặc áo đỏ đang chơi bóng rổ.", dict(sport=False, shirt=True, players=False, ball=False)),
        ("HAI NỮ VẬN ĐỘNG VIÊN ÁO ĐỎ CHƠI BÓNG ĐÁ, BÓNG BÊN TRÁI", dict(sport=True, shirt=True, players=True, ball=True)),
        (unicodedata.normalize("NFD", "Hai cầu thủ áo đỏ chơi bóng đá."), dict(sport=True, shirt=True, players=True, ball=False)),
    ],
)  # fmt: skip
def test_caption_mentions_on_model_like_text(caption: str, expected: dict[str, bool]) -> None:
    attrs = {"sport": "bóng đá", "players": 2, "shirt": "đỏ", "ball": "bên trái"}
    assert caption_mentions(caption, attrs) == expected


def test_render_scene_is_deterministic_and_seed_dependent() -> None:
    attrs = SceneAttributes(sport="quần vợt", players=2, shirt="vàng", ball="ở giữa")
    a = np.asarray(render_scene(attrs, size=96, seed=1))
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, np.asarray(render_scene(attrs, size=96, seed=1)))
    assert not np.array_equal(a, np.asarray(render_scene(attrs, size=96, seed=2)))


@pytest.mark.parametrize("shirt", SHIRTS)
def test_shirt_colour_is_visible_at_96px(shirt: str) -> None:
    """A coarse pixel check behind the visual one: enough pixels near the shirt's colour."""
    from vicap_jobs.data.synth_scenes import _SHIRT_RGB

    for sport in SPORTS:
        attrs = SceneAttributes(sport=sport, players=1, shirt=shirt, ball=BALL_POSITIONS[0])
        pixels = np.asarray(render_scene(attrs, size=96, seed=5), dtype=np.int32)
        distance = np.abs(pixels - np.asarray(_SHIRT_RGB[shirt])).sum(axis=-1)
        assert (distance < 60).sum() >= 80, (sport, shirt)


def test_png_format_and_overwrite(tmp_path: Path) -> None:
    ds = generate_synth(tmp_path, n_images=3, seed=0, size=32, image_format="png")
    assert sorted(p.suffix for p in ds.image_dirs["train"].iterdir()) == [".png"]
    with pytest.raises(InputError, match="already holds a data set"):
        generate_synth(tmp_path, n_images=3, seed=0, size=32)
    again = generate_synth(tmp_path, n_images=4, seed=0, size=32, overwrite=True)
    assert sorted(p.suffix for p in again.image_dirs["train"].iterdir()) == [".jpg", ".jpg"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="jpg, png"):
        generate_synth(tmp_path / "x", n_images=3, seed=0, image_format="tiff")
    with pytest.raises(InputError, match="at least 3"):
        generate_synth(tmp_path / "y", n_images=2, seed=0)
    with pytest.raises(InputError, match="size"):
        generate_synth(tmp_path / "z", n_images=3, seed=0, size=8)
