"""A folder of hostile and awkward image files, shared by the data and job-system tests."""

from __future__ import annotations

import io
import os
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

OK = "ok"
EMPTY = "empty file"
TRUNCATED = "truncated or corrupt image data"
NOT_AN_IMAGE = "not an image"
TOO_LARGE = "over the 64 MP limit"
UNREADABLE = "cannot read file"

NFD_NAME = unicodedata.normalize("NFD", "ảnh_bóng_đá.png")
EXIF_ROTATED = "exif_rotate6.jpg"
EXIF_STORED_SIZE = (40, 20)  # stored width × height; orientation 6 displays it 20 × 40


def is_root() -> bool:
    """Root reads every file regardless of permissions, so unreadable cases are skipped."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def make_hostile_folder(root: Path) -> dict[str, str]:
    """Write hostile image files under `root`; return {relative path: expected outcome}.

    The outcome is "ok" or a substring of the ImageError message `load_rgb` must raise.
    The keys are exactly the files `iter_image_files(root, recursive=True)` must find
    (POSIX separators, names as on disk). Not in the mapping, because a walk must
    skip them: notes.txt, a dangling symlink, the loop `sub/loop -> ..`, and (non-root
    only) the unreadable folder `locked/`.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    expected: dict[str, str] = {}

    def put(name: str, data: bytes, outcome: str) -> None:
        (root / name).write_bytes(data)
        expected[name] = outcome

    put("good.jpg", _encode(_noise_rgb(64, 48), "JPEG"), OK)
    put("good.png", _encode(_noise_rgb(32, 32), "PNG"), OK)
    put("UPPER_CASE.JPEG", _encode(_noise_rgb(24, 16), "JPEG"), OK)
    put("sub/nested.webp", _encode(_noise_rgb(20, 20), "WEBP"), OK)
    put("empty.jpg", b"", EMPTY)
    put("truncated.jpg", _encode(_noise_rgb(128, 128), "JPEG")[:3000], TRUNCATED)
    put("text.jpg", "đây không phải là ảnh\n".encode(), NOT_AN_IMAGE)
    put("bomb.png", png_header_only(100_000, 100_000), TOO_LARGE)
    put("cmyk.jpg", _encode(Image.new("CMYK", (16, 12), (0, 255, 255, 0)), "JPEG"), OK)
    put("gray16.png", _encode(_gray16(16, 8), "PNG"), OK)
    put("animated.gif", _animated_gif(), OK)
    put(NFD_NAME, _encode(_noise_rgb(10, 10), "PNG"), OK)
    put(EXIF_ROTATED, _exif_rotated_jpeg(), OK)
    put("rgba.png", _encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"), OK)
    put("palette.png", _encode(_noise_rgb(12, 12).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), OK)
    (root / "notes.txt").write_text("not an image suffix\n")
    os.symlink("good.jpg", root / "link_to_good.jpg")
    expected["link_to_good.jpg"] = OK
    os.symlink("missing.jpg", root / "dangling.jpg")
    os.symlink("..", root / "sub" / "loop")
    if not is_root():
        put("unreadable.jpg", _encode(_noise_rgb(8, 8), "JPEG"), UNREADABLE)
        (root / "unreadable.jpg").chmod(0)
        locked = root / "locked"
        locked.mkdir()
        (locked / "hidden.jpg").write_bytes(_encode(_noise_rgb(8, 8), "JPEG"))
        locked.chmod(0)
    return expected


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width × height RGB pixels, with an empty IDAT: a bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"") + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _noise_rgb(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(width * 1000 + height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _gray16(width: int, height: int) -> Image.Image:
    ramp = np.linspace(0, 65535, width * height).astype(np.uint16).reshape(height, width)
    return Image.fromarray(ramp)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (10, 10), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    return _encode(_noise_rgb(*EXIF_STORED_SIZE), "JPEG", exif=exif.tobytes())


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()
