"""Helpers for the browser tests: the app served over HTTP in a thread, chromium's path, hostile uploads.

``serve(app)`` -> context manager yielding the base URL (``http://127.0.0.1:PORT``) of a uvicorn
server running ``app`` in a background thread; the socket is bound before the thread starts, so
there is no race for the port. ``find_chromium()`` is the system chromium or None (a browser is
never downloaded). ``png_bomb`` and ``truncated_jpeg`` write hostile uploads.
"""

from __future__ import annotations

import shutil
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI
from PIL import Image

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def find_chromium() -> str | None:
    """The system chromium's executable, or None."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    return next((path for path in CHROMIUM_PATHS if Path(path).is_file()), None)


@contextmanager
def serve(app: FastAPI, *, start_timeout_s: float = 20.0) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free port of 127.0.0.1 in a thread; yield its base URL; stop it after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {port}")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def png_bomb(path: Path, side: int = 20_000) -> Path:
    """A valid 1-bit PNG of ``side``×``side`` white pixels: a few KB on disk, ``side``² pixels once decoded."""
    row = b"\x00" + b"\xff" * ((side + 7) // 8)  # filter byte "none", then the packed row
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row * 1000) for _ in range(side // 1000))
    idat += compressor.compress(row * (side % 1000)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def noise_image(path: Path, size: int = 48, seed: int = 1) -> Path:
    """A small noisy RGB image, its format from the suffix (.png, .jpg)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def truncated_jpeg(path: Path) -> Path:
    """A JPEG cut to its first third (the header is intact, the scan data is not)."""
    whole = noise_image(path.with_name("whole-" + path.name), size=64).read_bytes()
    path.write_bytes(whole[: len(whole) // 3])
    return path
