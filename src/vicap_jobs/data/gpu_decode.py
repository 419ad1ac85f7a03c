"""Batched JPEG decoding and preprocessing on a torch device: nvjpeg on CUDA, libjpeg-turbo on the CPU.

The GPU path of bulk captioning: file bytes → one ``torchvision.io.decode_jpeg`` call for
the whole batch on the device → the EXIF orientation applied (torchvision's CUDA decoder
ignores it) → resized by the checkpoint's :class:`~vicap_jobs.data.images.Preprocessing`
(squash or shorter-side-crop, antialiased bicubic/bilinear as Pillow does it), rounded to
8-bit levels as Pillow's output is, normalized, cast. The same calls run on the CPU, where
the tests compare them with the Pillow path (``load_rgb`` + ``Preprocessing.apply``).

Only JPEG files are decoded here. Anything else (PNG, WebP), a header Pillow cannot read,
data that does not end with the end-of-image marker (truncated: nvjpeg may not refuse it
as libjpeg-turbo and Pillow do), an image over :data:`~vicap_jobs.data.images.MAX_PIXELS`
or data the decoder rejects comes back as a failure with a reason; the caller decodes those with ``load_rgb``, which gives a
bad file its ``ImageError``. A batch the decoder rejects as a whole is decoded again image
by image, so one corrupt file costs only itself.

Measured against ``Preprocessing.apply`` on drawn scenes (tests/data/test_gpu_decode.py):
libjpeg-turbo through torchvision gives Pillow's decoded pixels exactly; resizing one axis
at a time with 8-bit rounding in between, as Pillow does, leaves 0.0002-0.06 levels of mean
difference (one 2-D ``interpolate`` call: 0.11-0.18, up to 9 levels). torchvision 0.29
deprecates its image decoders in favour of TorchCodec; they still work, and the GPU image
ships torchvision 0.26.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from vicap_jobs.data.images import MAX_PIXELS, Preprocessing

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"

# EXIF orientation → the transform that shows the image upright, on (..., H, W) tensors;
# the same transforms as Pillow's ``ImageOps.exif_transpose`` (ROTATE_90 is counter-clockwise there and in rot90).
_ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda x: x.flip(-1),  # FLIP_LEFT_RIGHT
    3: lambda x: x.rot90(2, (-2, -1)),  # ROTATE_180
    4: lambda x: x.flip(-2),  # FLIP_TOP_BOTTOM
    5: lambda x: x.transpose(-2, -1),  # TRANSPOSE
    6: lambda x: x.rot90(-1, (-2, -1)),  # ROTATE_270
    7: lambda x: x.rot90(2, (-2, -1)).transpose(-2, -1),  # TRANSVERSE
    8: lambda x: x.rot90(1, (-2, -1)),  # ROTATE_90
}


@dataclass
class DecodedBatch:
    """Decoded images (3, H, W) uint8 on the device, upright, by position; ``failures``: position → reason."""

    images: dict[int, torch.Tensor] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``image`` (..., H, W) as displayed under EXIF ``orientation`` (1-8; anything else leaves it as stored)."""
    transform = _ORIENT.get(orientation)
    return image if transform is None else transform(image).contiguous()


def jpeg_header(data: bytes) -> tuple[int, str | None]:
    """(EXIF orientation, None) for a JPEG this module may decode, else (1, why not): reads the header only."""
    if not data.startswith(JPEG_MAGIC):
        return 1, "not a JPEG"
    if not data.rstrip(b"\0").endswith(JPEG_END):  # truncated (or trailing bytes): Pillow decides, not nvjpeg
        return 1, "no end-of-image marker at the end"
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            try:
                orientation = int(im.getexif().get(ExifTags.Base.Orientation, 1))
            except (OSError, SyntaxError, ValueError, KeyError, TypeError):
                orientation = 1  # a broken EXIF block loses the rotation, as load_rgb does
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return 1, f"unreadable JPEG header: {str(exc).strip() or type(exc).__name__}"
    if width * height > MAX_PIXELS or width <= 0 or height <= 0:
        return 1, f"image is {width}×{height} pixels, outside what is decoded on the device"
    return orientation, None


def decode_jpegs(encoded: Sequence[bytes], *, device: torch.device | str) -> DecodedBatch:
    """Decode the JPEGs among ``encoded`` to upright RGB (3, H, W) uint8 tensors on ``device``, in one call.

    Every position ends up either in ``images`` or in ``failures`` (with a reason).
    """
    device = torch.device(device)
    batch = DecodedBatch()
    positions: list[int] = []
    orientations: list[int] = []
    for position, data in enumerate(encoded):
        orientation, refused = jpeg_header(data)
        if refused is not None:
            batch.failures[position] = refused
        else:
            positions.append(position)
            orientations.append(orientation)
    if not positions:
        return batch
    tensors = [torch.frombuffer(bytearray(encoded[p]), dtype=torch.uint8) for p in positions]
    try:
        decoded = _decode(tensors, device)
    except RuntimeError:  # one bad image fails the whole call: find it, keep the others
        decoded = []
        for position, tensor in zip(positions, tensors, strict=True):
            try:
                decoded.append(_decode([tensor], device)[0])
            except RuntimeError as exc:
                decoded.append(None)
                batch.failures[position] = f"JPEG decoder: {str(exc).strip().splitlines()[0][:200]}"
    for position, orientation, image in zip(positions, orientations, decoded, strict=True):
        if image is not None:
            batch.images[position] = orient(image, orientation)
    return batch


def _decode(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """torchvision's batched decode (nvjpeg for a CUDA device), RGB out whatever the JPEG's colour space."""
    return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))


def resize_shape(width: int, height: int, preprocessing: Preprocessing) -> tuple[int, int]:
    """(height, width) an image is resized to before any crop: Preprocessing's arithmetic exactly."""
    size = preprocessing.size
    if preprocessing.resize == "squash":
        return size, size
    if width <= height:
        return max(size, int(size * height / width)), size
    return size, max(size, int(size * width / height))


def to_pixels(
    images: Sequence[torch.Tensor],
    preprocessing: Preprocessing,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """Upright RGB images (3, H, W) uint8 on one device → the model's input batch (B, 3, S, S).

    Images of one shape are resized together, in float32 with antialiasing (torch's
    antialiased bicubic uses Pillow's a = -0.5), one axis at a time with each pass rounded
    and clamped to 0..255 as Pillow's 8-bit passes are; then normalized with the policy's
    mean and std.
    """
    if not images:
        raise ValueError("to_pixels needs at least one image")
    size = preprocessing.size
    device = images[0].device
    out = torch.empty((len(images), 3, size, size), dtype=torch.float32, device=device)  # (B, 3, S, S)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    for (_, height, width), members in groups.items():
        stack = torch.stack([images[i] for i in members]).float()  # (G, 3, H, W)
        new_h, new_w = resize_shape(width, height, preprocessing)
        # Two passes, width first, each rounded to 8 bits: how Pillow resamples (one 2-D pass
        # differed from it by up to 3 levels on 14% of values; these two passes by 1 level on < 0.01%).
        if new_w != width:
            stack = _resample(stack, (height, new_w), preprocessing)
        if new_h != height:
            stack = _resample(stack, (new_h, new_w), preprocessing)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        out[members] = stack[:, :, top : top + size, left : left + size]
    mean = torch.tensor(preprocessing.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(preprocessing.std, device=device).view(1, 3, 1, 1) * 255.0
    pixels = ((out - mean) / std).to(dtype)  # (B, 3, S, S)
    return pixels.contiguous(memory_format=torch.channels_last) if channels_last else pixels


def _resample(stack: torch.Tensor, shape: tuple[int, int], preprocessing: Preprocessing) -> torch.Tensor:
    """One antialiased resampling pass of (G, 3, H, W) float to ``shape``, rounded and clamped to 8-bit levels."""
    resized = F.interpolate(stack, size=shape, mode=preprocessing.resample, antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255)
