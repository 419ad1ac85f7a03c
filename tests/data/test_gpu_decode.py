"""Batched JPEG decoding on a torch device: same pixels as the Pillow path, EXIF orientation, refusals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.hostile import OK, make_hostile_folder
from vicap_jobs.data.gpu_decode import decode_jpegs, jpeg_header, orient, to_pixels
from vicap_jobs.data.images import CLIP_MEAN, CLIP_STD, Preprocessing, load_rgb
from vicap_jobs.data.synth_scenes import SceneAttributes, render_scene

# (width, height) of the test photos: landscape, portrait, square, odd sizes; one smaller than 224 (upsampled).
SIZES = [(320, 240), (240, 320), (256, 256), (333, 277), (180, 150)]


def _jpeg(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Drawn scenes (smooth areas, edges, text-like detail) cropped to SIZES, as JPEG bytes."""
    scene = render_scene(SceneAttributes(sport="quần vợt", players=2, shirt="vàng", ball="ở giữa"), size=400, seed=1)
    return [_jpeg(scene.crop((7 * i, 5 * i, 7 * i + w, 5 * i + h))) for i, (w, h) in enumerate(SIZES)]


def _levels(pixels: np.ndarray, reference: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """|difference| of two normalized batches in 8-bit levels."""
    return np.abs(pixels - reference) * np.asarray(preprocessing.std).reshape(1, 3, 1, 1) * 255


@pytest.mark.parametrize(
    "preprocessing",
    [
        Preprocessing(224),
        Preprocessing(64),
        Preprocessing(224, resample="bilinear"),
        Preprocessing(224, resize="shorter-side-crop", mean=CLIP_MEAN, std=CLIP_STD),
    ],
    ids=["squash-224", "squash-64", "bilinear", "clip-crop"],
)
def test_pixels_match_the_pillow_path(photos: list[bytes], preprocessing: Preprocessing) -> None:
    decoded = decode_jpegs(photos, device="cpu")
    assert not decoded.failures
    pixels = to_pixels([decoded.images[i] for i in range(len(photos))], preprocessing).numpy()
    reference = preprocessing.apply([Image.open(io.BytesIO(data)).convert("RGB") for data in photos])
    assert pixels.shape == reference.shape == (len(photos), 3, preprocessing.size, preprocessing.size)
    levels = _levels(pixels, reference, preprocessing)
    # Pillow resamples one axis at a time, rounding to 8 bits in between, as to_pixels does: mean 0.0002-0.06
    # levels here (Pillow 13 takes the vertical pass first for the portrait crop, where up to 8 levels differ).
    # One 2-D pass without the rounding in between measured 0.11-0.18: this bound tells the two apart.
    assert levels.mean() < 0.09
    assert levels.max() <= 10


def test_batch_output_dtype_and_layout(photos: list[bytes]) -> None:
    images = list(decode_jpegs(photos, device="cpu").images.values())
    pixels = to_pixels(images, Preprocessing(32), dtype=torch.bfloat16, channels_last=True)
    assert pixels.shape == (len(images), 3, 32, 32)
    assert pixels.dtype == torch.bfloat16
    assert pixels.is_contiguous(memory_format=torch.channels_last)
    fp32 = to_pixels(images, Preprocessing(32))
    assert torch.allclose(pixels.float(), fp32, atol=0.05)
    with pytest.raises(ValueError):
        to_pixels([], Preprocessing(32))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_is_pillows_exif_transpose(orientation: int) -> None:
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)  # (H, W, C)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    from PIL import ImageOps

    upright = np.asarray(ImageOps.exif_transpose(image))
    turned = orient(torch.from_numpy(stored).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(turned, upright)


def test_hostile_files_decode_as_load_rgb_or_fail_with_a_reason(tmp_path: Path) -> None:
    expected = make_hostile_folder(tmp_path)
    names = sorted(n for n in expected if (tmp_path / n).is_file() and not n.startswith("unreadable"))
    decoded = decode_jpegs([(tmp_path / n).read_bytes() for n in names], device="cpu")
    assert set(decoded.images) | set(decoded.failures) == set(range(len(names)))
    assert not set(decoded.images) & set(decoded.failures)
    for position, name in enumerate(names):
        if position in decoded.images:
            assert expected[name] == OK, name  # a file load_rgb refuses is never decoded here
            reference = np.asarray(load_rgb(tmp_path / name))  # (H, W, 3), upright
            got = decoded.images[position].permute(1, 2, 0).numpy()
            assert got.shape == reference.shape, name
            assert np.abs(got.astype(int) - reference).mean() < 1.0, name
        else:
            assert decoded.failures[position], name
    by_name = dict(zip(names, range(len(names)), strict=True))
    for jpeg in ("good.jpg", "UPPER_CASE.JPEG", "exif_rotate6.jpg"):
        assert by_name[jpeg] in decoded.images  # the ordinary JPEGs (one EXIF-rotated) are decoded here
    for refused in ("truncated.jpg", "text.jpg", "empty.jpg", "good.png"):
        assert by_name[refused] in decoded.failures


def test_one_corrupt_jpeg_costs_only_itself(photos: list[bytes]) -> None:
    broken = bytearray(photos[0])
    broken[600:1600] = bytes(1000)  # scan data zeroed: the header parses, the decoder fails
    batch = [photos[1], bytes(broken), photos[2]]
    decoded = decode_jpegs(batch, device="cpu")
    if 1 in decoded.images:
        pytest.skip("this libjpeg-turbo decodes the damaged scan without an error")
    assert sorted(decoded.images) == [0, 2]
    assert decoded.failures[1].startswith("JPEG decoder:")


def test_headers_that_are_refused_before_decoding(photos: list[bytes]) -> None:
    assert jpeg_header(photos[0]) == (1, None)
    rotated = _jpeg(Image.new("RGB", (8, 4)), exif=_exif(6))
    assert jpeg_header(rotated) == (6, None)
    assert jpeg_header(b"\x89PNG\r\n\x1a\n")[1] == "not a JPEG"
    assert jpeg_header(photos[0][:-200])[1] == "no end-of-image marker at the end"
    huge = bytearray(_jpeg(Image.new("RGB", (16, 16))))
    sof = huge.index(b"\xff\xc0")  # baseline frame header: length (2), precision (1), height (2), width (2)
    huge[sof + 5 : sof + 9] = (20000).to_bytes(2, "big") + (20000).to_bytes(2, "big")
    assert jpeg_header(bytes(huge))[1] is not None  # 400 MP: over MAX_PIXELS, never sent to the device


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_nvjpeg_pixels_match_the_cpu_decoder(photos: list[bytes]) -> None:
    preprocessing = Preprocessing(224)
    on_gpu = decode_jpegs(photos, device="cuda")
    on_cpu = decode_jpegs(photos, device="cpu")
    assert sorted(on_gpu.images) == sorted(on_cpu.images) == list(range(len(photos)))
    gpu = to_pixels([on_gpu.images[i] for i in range(len(photos))], preprocessing).cpu().numpy()
    cpu = to_pixels([on_cpu.images[i] for i in range(len(photos))], preprocessing).numpy()
    assert _levels(gpu, cpu, preprocessing).mean() < 1.0  # nvjpeg's IDCT and upsampling differ slightly
