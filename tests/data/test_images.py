"""Decoding hostile files, EXIF orientation, mode conversion, preprocessing and hashing."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.data.hostile import EXIF_ROTATED, EXIF_STORED_SIZE, OK, make_hostile_folder, png_header_only
from vicap_jobs.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_PIXELS,
    image_size,
    load_rgb,
    preprocess,
    sha256_file,
)
from vicap_jobs.errors import ImageError


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, make_hostile_folder(root)


def _cases() -> list[str]:
    """Names of the hostile files, collected once at import time for parametrization."""
    import tempfile

    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        return sorted(make_hostile_folder(Path(tmp) / "h"))


@pytest.mark.parametrize("name", _cases())
def test_hostile_file_loads_or_fails_with_a_readable_reason(hostile: tuple[Path, dict[str, str]], name: str) -> None:
    root, expected = hostile
    outcome = expected[name]
    if outcome == OK:
        image = load_rgb(root / name)
        assert image.mode == "RGB"
        assert len(image.tobytes()) == image.width * image.height * 3
        return
    with pytest.raises(ImageError) as caught:
        load_rgb(root / name)
    message = str(caught.value)
    assert outcome in message
    assert "\n" not in message and len(message) < 200 and "Traceback" not in message


def test_truncated_images_are_not_enabled_globally(hostile: tuple[Path, dict[str, str]]) -> None:
    root, _ = hostile
    with pytest.raises(ImageError):
        load_rgb(root / "truncated.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_exif_orientation_is_applied(hostile: tuple[Path, dict[str, str]]) -> None:
    root, _ = hostile
    stored_w, stored_h = EXIF_STORED_SIZE
    with Image.open(root / EXIF_ROTATED) as raw:
        assert raw.size == (stored_w, stored_h)
    assert load_rgb(root / EXIF_ROTATED).size == (stored_h, stored_w)
    assert image_size(root / EXIF_ROTATED) == (stored_h, stored_w)


def test_image_size_matches_decoded_size(hostile: tuple[Path, dict[str, str]]) -> None:
    root, expected = hostile
    for name, outcome in expected.items():
        if outcome == OK:
            assert image_size(root / name) == load_rgb(root / name).size, name
    assert image_size(root / "text.jpg") is None
    assert image_size(root / "empty.jpg") is None
    assert image_size(root / "bomb.png") == (100_000, 100_000)


def test_mode_conversions_give_expected_pixels(hostile: tuple[Path, dict[str, str]]) -> None:
    root, _ = hostile
    assert load_rgb(root / "rgba.png").getpixel((0, 0)) == (255, 255, 255)  # transparent → white
    red, green, blue = load_rgb(root / "cmyk.jpg").getpixel((0, 0))  # type: ignore[misc]
    assert red > 200 and green < 60 and blue < 60
    gray = load_rgb(root / "gray16.png")
    assert gray.getpixel((0, 0)) == (0, 0, 0)
    assert gray.getpixel((gray.width - 1, gray.height - 1)) == (255, 255, 255)
    assert load_rgb(root / "animated.gif").getpixel((5, 5)) == (255, 0, 0)  # first frame


def test_loaded_image_is_detached_from_its_file(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.new("RGB", (3, 2), (1, 2, 3)).save(path)
    image = load_rgb(path)
    path.unlink()
    assert image.getpixel((2, 1)) == (1, 2, 3)


def test_bomb_message_names_the_dimensions(hostile: tuple[Path, dict[str, str]]) -> None:
    root, _ = hostile
    with pytest.raises(ImageError, match="^image is 100000×100000 pixels, over the 64 MP limit$"):
        load_rgb(root / "bomb.png")


@pytest.mark.parametrize("as_error", [False, True])
def test_pillow_warning_band_becomes_image_error(tmp_path: Path, as_error: bool) -> None:
    """10000×10000 is past Pillow's warning threshold but below its hard error."""
    path = tmp_path / "warn.png"
    path.write_bytes(png_header_only(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error" if as_error else "ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match="10000×10000 pixels, over the 64 MP limit"):
            load_rgb(path)


def test_our_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    over = tmp_path / "over.png"
    over.write_bytes(png_header_only(9_000, 8_000))  # 72 MP: under Pillow's limits, over ours
    with pytest.raises(ImageError, match="9000×8000 pixels"):
        load_rgb(over)
    at_limit = tmp_path / "at_limit.png"
    at_limit.write_bytes(png_header_only(8_000, MAX_PIXELS // 8_000))  # allowed, then fails to decode
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_rgb(at_limit)


def test_missing_and_non_regular_files(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found"):
        load_rgb(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        load_rgb(tmp_path)
    assert image_size(tmp_path / "nope.jpg") is None


def test_preprocess_shape_dtype_and_normalization() -> None:
    colour = (255, 0, 128)
    images = [Image.new("RGB", (7, 5), colour), Image.new("RGB", (40, 90), colour)]
    batch = preprocess(images, 4)
    assert batch.shape == (2, 3, 4, 4) and batch.dtype == np.float32 and batch.flags.c_contiguous
    expected = [(c / 255.0 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    for channel in range(3):
        np.testing.assert_allclose(batch[:, channel], expected[channel], atol=1e-5)


def test_preprocess_uses_bicubic_resize() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (50, 30, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    batch = preprocess([image], 16)
    reference = np.asarray(image.resize((16, 16), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    restored = batch[0].transpose(1, 2, 0) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    np.testing.assert_allclose(restored, reference, atol=1e-5)


def test_preprocess_edge_cases() -> None:
    assert preprocess([], 8).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="RGB"):
        preprocess([Image.new("L", (4, 4))], 8)
    with pytest.raises(ValueError, match="positive"):
        preprocess([Image.new("RGB", (4, 4))], 0)


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    data = np.random.default_rng(1).bytes(3 * (1 << 20) + 17)  # several 1 MiB blocks plus a tail
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ImageError, match="cannot read file"):
        sha256_file(tmp_path / "missing.bin")
