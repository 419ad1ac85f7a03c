"""Preprocessing policies (``data.images.Preprocessing``): the default is bit-identical to the earlier code."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vicap_jobs.data.images import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocessing, preprocess
from vicap_jobs.errors import InputError


def earlier_preprocess(images: list[Image.Image], size: int) -> np.ndarray:
    """The code every checkpoint so far was trained with, verbatim."""
    batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        batch[i] = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    normalized = (batch.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2))


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("size", [7, 32, 96, 224])
def test_default_policy_is_bit_identical_to_the_earlier_code(size: int) -> None:
    images = [noise(50, 30, 1), noise(31, 97, 2), noise(224, 224, 3), noise(3, 400, 4)]
    expected = earlier_preprocess(images, size)
    for got in (preprocess(images, size), Preprocessing(size).apply(images)):
        assert got.dtype == expected.dtype and got.shape == expected.shape and got.flags.c_contiguous
        assert got.tobytes() == expected.tobytes()


def test_shorter_side_then_centre_crop_keeps_the_aspect_ratio() -> None:
    policy = Preprocessing(30, resize="shorter-side-crop")
    wide = noise(60, 30, 5)  # shorter side already 30: no resize, the centre 30×30 is cut out
    centre = wide.crop((15, 0, 45, 30))
    np.testing.assert_array_equal(policy.apply([wide]), Preprocessing(30).apply([centre]))
    tall = noise(20, 50, 6)  # shorter side 20 → 30, long side 50 → 75, centre rows 22..52
    resized = tall.resize((30, 75), Image.Resampling.BICUBIC).crop((0, 22, 30, 52))
    np.testing.assert_array_equal(policy.apply([tall]), Preprocessing(30).apply([resized]))
    square = noise(40, 40, 7)
    np.testing.assert_array_equal(policy.apply([square]), Preprocessing(30).apply([square]))


def test_statistics_and_resampling_are_part_of_the_policy() -> None:
    image = noise(40, 20, 8)
    clip = Preprocessing(16, mean=CLIP_MEAN, std=CLIP_STD).apply([image])
    restored = clip[0].transpose(1, 2, 0) * np.asarray(CLIP_STD) + np.asarray(CLIP_MEAN)
    np.testing.assert_allclose(restored * 255, np.asarray(image.resize((16, 16), Image.Resampling.BICUBIC)), atol=1e-3)
    bilinear = Preprocessing(16, resample="bilinear").apply([image])
    assert not np.array_equal(bilinear, Preprocessing(16).apply([image]))


def test_json_round_trip_and_errors() -> None:
    policy = Preprocessing(224, resize="shorter-side-crop", mean=CLIP_MEAN, std=CLIP_STD)
    assert Preprocessing.from_json(policy.to_json()) == policy
    assert Preprocessing.from_json({"size": 32}) == Preprocessing(32)
    for bad, match in [
        ({"size": 0}, "positive"),
        ({"size": 32, "resize": "pad"}, "resize policy 'pad'"),
        ({"size": 32, "resample": "lanczos"}, "resampling 'lanczos'"),
        ({"size": 32, "mean": [0.5]}, "malformed preprocessing"),
        ({"size": 32, "std": [1, 0, 1]}, "std positive"),
        ({"size": 32, "crop": 30}, "unknown preprocessing fields"),
        ([], "JSON object"),
        ({}, "malformed preprocessing"),
    ]:
        with pytest.raises(InputError, match=match):
            Preprocessing.from_json(bad)


def test_shorter_side_crop_uses_the_policy_resampling_and_integer_centre_offsets() -> None:
    """An odd margin is split with the extra pixel after the crop (floor division), as CLIP's processor does."""
    policy = Preprocessing(4, resize="shorter-side-crop", resample="bilinear")
    wide = noise(13, 8, 9)  # shorter side 8 → 4, long side 13 → 6: margin 2, offset 1
    expected = wide.resize((6, 4), Image.Resampling.BILINEAR).crop((1, 0, 5, 4))
    np.testing.assert_array_equal(policy.apply([wide]), Preprocessing(4, resample="bilinear").apply([expected]))
    tall = noise(8, 15, 10)  # shorter side 8 → 4, long side 15 → 7: margin 3, offset 1 (not 1.5)
    expected = tall.resize((4, 7), Image.Resampling.BILINEAR).crop((0, 1, 4, 5))
    np.testing.assert_array_equal(policy.apply([tall]), Preprocessing(4, resample="bilinear").apply([expected]))
    wider = noise(15, 8, 11)  # margin 3 across: offset 1
    expected = wider.resize((7, 4), Image.Resampling.BILINEAR).crop((1, 0, 5, 4))
    np.testing.assert_array_equal(policy.apply([wider]), Preprocessing(4, resample="bilinear").apply([expected]))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"size": True}, "preprocessing size must be a positive integer, got True"),
        ({"size": "8"}, "preprocessing size must be a positive integer, got '8'"),
        ({"size": 8, "resize": "pad"}, "unknown resize policy 'pad'; choose one of: squash, shorter-side-crop"),
        ({"size": 8, "resample": "lanczos"}, "unknown resampling 'lanczos'; choose one of: bicubic, bilinear"),
        ({"size": 8, "mean": (0.5, 0.5)}, "mean and std need 3 channels each, std positive; got (0.5, 0.5) and"),
        ({"size": 8, "std": (1.0, 1.0)}, "mean and std need 3 channels each, std positive; got"),
    ],
)
def test_a_bad_policy_is_one_exact_input_error(values: dict[str, object], message: str) -> None:
    with pytest.raises(InputError) as raised:
        Preprocessing(**values)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message)


def test_a_manifest_policy_needs_three_numbers_per_statistic() -> None:
    for values in ([0.5, 0.5], "0.5,0.5,0.5", [0.1, 0.2, 0.3, 0.4]):
        with pytest.raises(InputError) as raised:
            Preprocessing.from_json({"size": 8, "mean": values})
        assert f"expected 3 numbers, got {values!r}" in str(raised.value)
