"""Image decoding and preprocessing shared by training and every inference engine.

Training, every inference engine and the bulk pipeline all call `load_rgb` and a
:class:`Preprocessing` policy from here, so a model sees exactly the pixels it was
trained on; the policy is data, stored in the checkpoint manifest.
Every decoding failure becomes an `ImageError` with a short reason (never a raw
Pillow traceback), so the pipeline can record it per item and move on.

No torch import here: engines turn the numpy batch into whatever they need.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vicap_jobs.errors import ImageError, InputError
from vicap_jobs.storage.locations import is_url
from vicap_jobs.storage.objects import read_object

log = logging.getLogger(__name__)

MAX_PIXELS = 64_000_000
"""Largest image (width × height) we decode: 64 MP is ~200 MB as RGB; anything
bigger is either a decompression bomb or a scan no captioner needs at full size."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's image statistics
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_HASH_BLOCK = 1 << 20
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# What Pillow raises while parsing headers or decoding broken data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


def load_rgb(location: str | Path) -> Image.Image:
    """Decode an image file (or object storage URL) into a fully loaded 8-bit RGB image, upright as displayed.

    Applies the EXIF orientation, keeps the first frame of animations, composites
    transparency on white and maps every other pixel mode to RGB.
    Raises ImageError with a short reason for anything that is not a safe, readable image;
    a URL is read through ``vicap_jobs.storage`` (which raises StorageUnavailable, not an
    ImageError, when the storage itself cannot be reached).
    """
    if is_url(location):
        return decode_rgb(read_object(str(location)))
    path = Path(location)
    _check_regular_file(path)
    return _decode_source(path)


def decode_rgb(data: bytes) -> Image.Image:
    """:func:`load_rgb` for bytes already read (an object from storage, an upload)."""
    if not data:
        raise ImageError("empty file")
    return _decode_source(io.BytesIO(data))


def _decode_source(source: Path | io.BytesIO) -> Image.Image:
    try:
        with _open_checked(source) as im:
            _decode_first_frame(im)
            upright = _upright_copy(im)
    except ImageError:
        raise
    except OSError as exc:  # opened fine, then the file vanished or became unreadable
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc
    return _to_rgb8(upright)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as displayed (EXIF rotation applied), read from the header only.

    Nothing is decoded, so this is cheap and safe even for decompression bombs;
    returns None when the file is not a readable image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = _exif_orientation(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return _probe_size_unchecked(path)
    except (UnidentifiedImageError, *_DECODE_ERRORS):
        return None
    if orientation in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks so large files never sit in memory."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                digest.update(block)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc
    return digest.hexdigest()


ResizePolicy = Literal["squash", "shorter-side-crop"]
RESIZE_POLICIES: tuple[ResizePolicy, ...] = ("squash", "shorter-side-crop")
Resample = Literal["bicubic", "bilinear"]
RESAMPLES: dict[str, Image.Resampling] = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Preprocessing:
    """How RGB images become a model's input batch; stored in every checkpoint manifest.

    resize "squash": each image resized to size×size, aspect ratio not kept, no crop
    (the CNN+LSTM families, like the BLIP processor). "shorter-side-crop": the shorter
    side resized to ``size`` (aspect ratio kept), then the centre size×size crop (CLIP).
    Pixels are scaled to [0, 1], then normalized with ``mean`` and ``std`` per channel.
    Bicubic is the interpolation the ImageNet/CLIP backbones were pretrained with, and
    Pillow's bicubic antialiases when shrinking.
    """

    size: int
    resize: ResizePolicy = "squash"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: Resample = "bicubic"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise InputError(f"preprocessing size must be a positive integer, got {self.size!r}")
        if self.resize not in RESIZE_POLICIES:
            raise InputError(f"unknown resize policy {self.resize!r}; choose one of: {', '.join(RESIZE_POLICIES)}")
        if self.resample not in RESAMPLES:
            raise InputError(f"unknown resampling {self.resample!r}; choose one of: {', '.join(sorted(RESAMPLES))}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InputError(f"mean and std need 3 channels each, std positive; got {self.mean} and {self.std}")

    def apply(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images → normalized float32 batch (B, 3, size, size)."""
        size = self.size
        resample = RESAMPLES[self.resample]
        batch = np.empty((len(images), size, size, 3), dtype=np.uint8)  # (B, H, W, C)
        for i, image in enumerate(images):
            if image.mode != "RGB":
                raise ValueError(f"preprocess expects RGB images (use load_rgb), got mode {image.mode!r}")
            if self.resize == "squash":
                resized = image.resize((size, size), resample)
            else:
                resized = _shorter_side_crop(image, size, resample)
            batch[i] = np.asarray(resized, dtype=np.uint8)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        normalized = (batch.astype(np.float32) / 255.0 - mean) / std  # (B, H, W, C)
        return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2))  # (B, C, H, W)

    def to_json(self) -> dict[str, Any]:
        """The policy as JSON-ready values (the manifest's ``preprocessing`` entry)."""
        return {
            "size": self.size,
            "resize": self.resize,
            "resample": self.resample,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_json(cls, data: object) -> Preprocessing:
        """Read :meth:`to_json` output; anything malformed is an InputError."""
        if not isinstance(data, dict):
            raise InputError(f"preprocessing must be a JSON object, got {data!r}")
        unknown = sorted(set(data) - {"size", "resize", "resample", "mean", "std"})
        if unknown:
            raise InputError(f"unknown preprocessing fields {unknown}")
        try:
            return cls(
                size=data["size"],
                resize=data.get("resize", "squash"),
                mean=_three_floats(data.get("mean", IMAGENET_MEAN)),
                std=_three_floats(data.get("std", IMAGENET_STD)),
                resample=data.get("resample", "bicubic"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed preprocessing {data!r}: {exc}") from None


def _three_floats(values: object) -> tuple[float, float, float]:
    if not isinstance(values, list | tuple) or len(values) != 3:
        raise ValueError(f"expected 3 numbers, got {values!r}")
    first, second, third = (float(value) for value in values)
    return first, second, third


def _shorter_side_crop(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Resize the shorter side to ``size`` (aspect kept), then crop the centre size×size square."""
    width, height = image.size
    if width <= height:
        new_width, new_height = size, max(size, int(size * height / width))
    else:
        new_width, new_height = max(size, int(size * width / height)), size
    resized = image.resize((new_width, new_height), resample)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def preprocess(images: Sequence[Image.Image], size: int) -> np.ndarray:
    """Turn RGB images into a normalized float32 batch of shape (B, 3, size, size).

    The default policy (:class:`Preprocessing` with only ``size``): squash to
    size×size with bicubic resampling, ImageNet mean and std.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return Preprocessing(size).apply(images)


def _check_regular_file(path: Path) -> None:
    """Reject missing, special and empty files before Pillow sees them (a FIFO would block)."""
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise ImageError("file not found") from exc
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file")
    if info.st_size == 0:
        raise ImageError("empty file")


def _open_checked(path: Path | io.BytesIO) -> Image.Image:
    """Open lazily (header only) and refuse images over MAX_PIXELS before any decoding."""
    try:
        im = Image.open(path)
    except UnidentifiedImageError as exc:
        raise ImageError("not an image (cannot identify format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refused on its own (stricter) limit; report the real size if we can read it.
        size = _probe_size_unchecked(path)
        raise ImageError(_too_large_message(size) if size else f"image too large to decode safely: {exc}") from exc
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"corrupt image header: {_reason(exc)}") from exc
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise ImageError(_too_large_message((width, height)))
    if width <= 0 or height <= 0:
        im.close()
        raise ImageError(f"image has no pixels ({width}×{height})")
    return im


def _decode_first_frame(im: Image.Image) -> None:
    """Decode the current (first) frame into memory; animations keep only that frame."""
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large to decode safely: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"truncated or corrupt image data: {_reason(exc)}") from exc


def _upright_copy(im: Image.Image) -> Image.Image:
    """A copy detached from the file, rotated/flipped as its EXIF orientation says.

    Runs on the opened file so each format plugin reads its own EXIF; a broken EXIF
    block only loses the rotation, it does not fail the image.
    """
    try:
        upright = ImageOps.exif_transpose(im)
    except _DECODE_ERRORS + (KeyError,) as exc:
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
        return im.copy()
    return upright if upright is not None else im.copy()


def _to_rgb8(image: Image.Image) -> Image.Image:
    """Map any Pillow mode to 8-bit RGB: alpha over white, 16/32-bit scaled down, CMYK/P/L converted."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _WIDE_MODES:
        return _wide_to_rgb8(image)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image)
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"unsupported pixel mode {mode!r}") from exc


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Flatten transparency onto a white background (captions describe what a viewer sees)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_to_rgb8(image: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit int or float grayscale to 8 bits, then replicate to RGB.

    16-bit modes use the full 0..65535 range; 32-bit "I"/"F" are ambiguous, so values
    up to 255 are kept, up to 65535 treated as 16-bit, and anything else min-max scaled.
    """
    values = np.asarray(image, dtype=np.float64)
    high = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16") or 255.0 < high <= 65535.0:
        scaled = values / 257.0
    elif high <= 255.0 and float(values.min()) >= 0.0:
        scaled = values
    else:
        low = float(values.min())
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable); reads the header only."""
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except _DECODE_ERRORS + (KeyError,):
        return 1


def _probe_size_unchecked(path: Path | io.BytesIO) -> tuple[int, int] | None:
    """Stored size read through Pillow's format plugins, skipping its bomb check.

    Used only after Pillow refused a file as a decompression bomb, so the error can
    name the real dimensions; plugins parse headers only, nothing is decoded.
    """
    Image.init()
    try:
        with path.open("rb") if isinstance(path, Path) else contextlib.nullcontext(path) as fp:
            name = path.name if isinstance(path, Path) else ""
            fp.seek(0)
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                accepted = accept(prefix) if accept else True
                if not accepted or isinstance(accepted, str):
                    continue
                fp.seek(0)
                try:
                    return factory(fp, name).size
                except _DECODE_ERRORS:
                    continue
    except OSError:
        return None
    return None


def _too_large_message(size: tuple[int, int]) -> str:
    width, height = size
    return f"image is {width}×{height} pixels, over the {MAX_PIXELS // 1_000_000} MP limit"


def _reason(exc: BaseException) -> str:
    """One-line reason from a Pillow exception (its message, or its class name when empty)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
