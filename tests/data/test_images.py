"""Decoding hostile files, EXIF orientation, mode conversion, preprocessing and hashing."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

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


# --------------------------------------------------------------------------- exact reasons


def _error(path: Path) -> str:
    with pytest.raises(ImageError) as caught:
        load_rgb(path)
    return str(caught.value)


def test_reasons_are_exact(hostile: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, _ = hostile
    assert _error(root / "empty.jpg") == "empty file"
    assert _error(root / "text.jpg") == "not an image (cannot identify format)"
    assert _error(tmp_path / "nope.jpg") == "file not found"
    assert _error(tmp_path) == "not a regular file"
    with pytest.raises(ImageError) as caught:
        sha256_file(tmp_path / "missing.bin")
    assert str(caught.value) == "cannot read file: No such file or directory"


def test_a_path_the_os_cannot_stat_gives_its_reason(tmp_path: Path) -> None:
    os.symlink("loop.jpg", tmp_path / "loop.jpg")
    assert _error(tmp_path / "loop.jpg") == "cannot read file: Too many levels of symbolic links"
    assert _error(tmp_path / ("x" * 300 + ".jpg")) == "cannot read file: File name too long"


def test_truncated_image_reason_is_pillows_first_line(hostile: tuple[Path, dict[str, str]]) -> None:
    root, _ = hostile
    with Image.open(root / "truncated.jpg") as image, pytest.raises(OSError) as pillow:
        image.load()
    assert _error(root / "truncated.jpg") == f"truncated or corrupt image data: {str(pillow.value).splitlines()[0]}"


@pytest.fixture()
def small_png(tmp_path: Path) -> Path:
    path = tmp_path / "small.png"
    Image.new("RGB", (4, 3), (9, 8, 7)).save(path)
    return path


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (EOFError(), "truncated or corrupt image data: EOFError"),  # no message: the exception's class
        (struct.error("bad\nsecond line"), "truncated or corrupt image data: bad"),
        (ValueError("x" * 300), "truncated or corrupt image data: " + "x" * 200),  # one line, at most 200 chars
        (Image.DecompressionBombError("too big"), "image too large to decode safely: too big"),
    ],
    ids=["empty", "multi-line", "long", "bomb"],
)
def test_pillow_decoding_errors_become_one_short_line(
    small_png: Path, monkeypatch: pytest.MonkeyPatch, raised: Exception, message: str
) -> None:
    def fail(self: Image.Image) -> None:
        raise raised

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    assert _error(small_png) == message


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (OSError(errno.EIO, "Input/output error"), "cannot read file: Input/output error"),
        (SyntaxError("broken PNG file"), "corrupt image header: broken PNG file"),
        (struct.error(), "corrupt image header: error"),
    ],
    ids=["io", "syntax", "struct"],
)
def test_pillow_open_errors_become_one_short_line(
    small_png: Path, monkeypatch: pytest.MonkeyPatch, raised: Exception, message: str
) -> None:
    def fail(*args: object, **kwargs: object) -> Image.Image:
        raise raised

    monkeypatch.setattr(Image, "open", fail)
    assert _error(small_png) == message


def test_a_pixel_mode_pillow_cannot_convert_is_reported(
    hostile: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = hostile
    convert = Image.Image.convert

    def no_cmyk(self: Image.Image, mode: str | None = None, *args: object, **kwargs: object) -> Image.Image:
        if self.mode == "CMYK":
            raise ValueError("conversion from CMYK to RGB not supported")
        return convert(self, mode, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", no_cmyk)
    assert _error(root / "cmyk.jpg") == "unsupported pixel mode 'CMYK'"


# --------------------------------------------------------------------------- EXIF


def _jpeg_with_text_orientation(path: Path) -> Path:
    """A JPEG whose EXIF orientation is the text "abc" instead of a number (a broken camera or editor)."""
    ifd = b"MM\x00*\x00\x00\x00\x08\x00\x01" + struct.pack(">HHI", 0x0112, 2, 4) + b"abc\x00" + b"\x00" * 4
    Image.new("RGB", (8, 4), (10, 20, 30)).save(path, exif=b"Exif\x00\x00" + ifd)
    with Image.open(path) as image:
        assert image.getexif()[0x0112] == "abc"
    return path


def test_unreadable_exif_orientation_only_loses_the_rotation(tmp_path: Path) -> None:
    path = _jpeg_with_text_orientation(tmp_path / "text_orientation.jpg")
    assert image_size(path) == (8, 4)
    assert load_rgb(path).size == (8, 4)


def test_exif_transpose_failure_keeps_the_stored_image(
    hostile: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root, _ = hostile

    def broken(image: Image.Image) -> Image.Image:
        raise SyntaxError("bad EXIF")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    with caplog.at_level(logging.DEBUG, logger="vicap_jobs.data.images"):
        image = load_rgb(root / EXIF_ROTATED)
    assert image.size == EXIF_STORED_SIZE  # not rotated, but decoded
    assert caplog.messages == ["ignoring unreadable EXIF orientation: bad EXIF"]


# --------------------------------------------------------------------------- pixel modes


def test_transparency_of_palette_and_gray_alpha_images_is_white(tmp_path: Path) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red (transparent below), index 1 blue
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette_key.png", transparency=0)
    image = load_rgb(tmp_path / "palette_key.png")
    assert [image.getpixel((0, 0)), image.getpixel((1, 0))] == [(255, 255, 255), (0, 0, 255)]
    gray_alpha = Image.new("LA", (3, 1))
    for x, pixel in enumerate([(0, 0), (100, 255), (0, 128)]):
        gray_alpha.putpixel((x, 0), pixel)
    gray_alpha.save(tmp_path / "gray_alpha.png")
    image = load_rgb(tmp_path / "gray_alpha.png")
    assert [image.getpixel((x, 0)) for x in range(3)] == [(255, 255, 255), (100, 100, 100), (127, 127, 127)]


# The docstring's rule: 16-bit modes scale the full 0..65535 range to 0..255; 32-bit "I"/"F" keep values
# up to 255, treat values up to 65535 as 16-bit, and min-max scale anything else (negative or larger).
WIDE_CASES = {
    "16-bit, small values": (np.uint16, "png", [0, 100, 200], [0, 0, 1]),
    "16-bit, full range": (np.uint16, "png", [0, 32768, 65535], [0, 128, 255]),
    "32-bit, 8-bit range from 0": (np.int32, "tif", [0, 100, 200], [0, 100, 200]),
    "32-bit, up to 255 exactly": (np.int32, "tif", [10, 100, 255], [10, 100, 255]),
    "32-bit, just over 255": (np.int32, "tif", [0, 256], [0, 1]),
    "32-bit, 16-bit range": (np.int32, "tif", [1000, 30000, 65535], [4, 117, 255]),
    "32-bit, just over 65535": (np.int32, "tif", [1000, 33268, 65536], [0, 128, 255]),  # 127.5 rounds to even
    "32-bit, large": (np.int32, "tif", [0, 50000, 75000, 100000], [0, 128, 191, 255]),
    "float, 8-bit range": (np.float32, "tif", [2.5, 100.4, 254.6], [2, 100, 255]),
    "float, negative": (np.float32, "tif", [-1.0, 0.0, 1.0], [0, 128, 255]),
    "float, narrow negative": (np.float32, "tif", [-0.5, -0.25, 0.0], [0, 128, 255]),
    # 1.0792951... scales to 159.4999...: double precision gives 159, single precision would give 160.
    "float, min-max near .5": (
        np.float32,
        "tif",
        [0.5664685964584351, 1.3473950624465942, 1.0792951583862305, -0.1277155876159668, 1.8019882440567017],
        [92, 195, 159, 0, 255],
    ),
}


@pytest.mark.parametrize("case", list(WIDE_CASES))
def test_wide_gray_modes_map_to_8_bits(tmp_path: Path, case: str) -> None:
    dtype, suffix, values, expected = WIDE_CASES[case]
    path = tmp_path / f"wide.{suffix}"
    Image.fromarray(np.array([values], dtype=dtype)).save(path)
    with Image.open(path) as stored:
        assert stored.mode in {"I;16", "I", "F"}
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0)) for x in range(len(values))] == [(v, v, v) for v in expected]


def test_one_pixel_wide_and_high_images_load(tmp_path: Path) -> None:
    for size in [(1, 5), (5, 1), (1, 1)]:
        Image.new("RGB", size, (1, 2, 3)).save(tmp_path / "thin.png")
        image = load_rgb(tmp_path / "thin.png")
        assert (image.size, image.getpixel((0, 0))) == (size, (1, 2, 3))


def test_preprocess_accepts_the_smallest_size() -> None:
    batch = preprocess([Image.new("RGB", (5, 3), (255, 255, 255))], 1)
    assert batch.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(
        batch[0, :, 0, 0], [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)], atol=1e-5
    )
