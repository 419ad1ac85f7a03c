"""Small helpers the benchmark scripts share: result files, memory, machine facts, private services, inputs."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with a timestamp and machine facts."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb(pid: int) -> float:
    """Current resident memory of a process and its children, in MiB."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        direct = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return found
    for child in direct:
        found.append(child)
        found.extend(_children(child))
    return found


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except FileNotFoundError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


# -- services and inputs the queue benchmarks share (imports of the package stay inside the functions) --------


def free_port() -> int:
    """A TCP port nothing listens on now (for a private server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_redis(work: Path) -> Iterator[str]:
    """A throw-away redis-server on a free port, no persistence (the shared one is left alone); yields its URL."""
    import socket
    import subprocess

    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*command, "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def make_tiny_model(out_dir: Path, image_size: int, *, bench: str, eos_bias: float = 0.0) -> Path:
    """A randomly initialised cnn-lstm on the tiny backbone, saved as a checkpoint; returns its folder.

    A random model decodes max_len tokens (the worst case). ``eos_bias`` > 0 adds that much to the
    end-of-caption logit, so captions end after a few tokens and the engine's share of the time shrinks.
    """
    import torch

    from vicap_jobs.data.text import tokenize
    from vicap_jobs.data.vocab import EOS_ID, Vocabulary
    from vicap_jobs.models.checkpoint import save_checkpoint
    from vicap_jobs.models.registry import get_family

    torch.manual_seed(0)
    words = tokenize("một cầu thủ đang đá quả bóng trên sân cỏ xanh trong trận đấu bóng đá buổi chiều", "syllable")
    vocab = Vocabulary.build([words], tokenization="syllable")
    spec = get_family("cnn-lstm")
    config = spec.config_cls(backbone="tiny", image_size=image_size, dropout=0.0)
    model = spec.build(config, len(vocab), backbone_weights="random").eval()
    if eos_bias:
        with torch.no_grad():
            model.output.bias[EOS_ID] += eos_bias
    return save_checkpoint(out_dir, model=model, family="cnn-lstm", codec=vocab, meta={"bench": bench})


def write_tiny_jpegs(folder: Path, n: int, *, size: int = 48, variants: int = 64, seed: int = 0) -> list[Path]:
    """``n`` small JPEG files ``000000.jpg``... in ``folder``, each with different bytes, fast (~50 µs a file).

    ``variants`` distinct pictures are encoded once; file ``i`` is picture ``i % variants`` with a
    JPEG comment segment naming ``i`` after its start marker, so every file hashes differently and
    still decodes. 100,000 files of 48 px take ~5 s and ~400 MB of disk (one 4 KiB block each).
    """
    import io
    import random
    import struct

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pictures: list[bytes] = []
    for _ in range(variants):
        image = Image.new("RGB", (size, size), _colour(rng))
        for _ in range(6):
            x, y = rng.randrange(size), rng.randrange(size)
            image.paste(_colour(rng), (x, y, min(size, x + size // 3), min(size, y + size // 3)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        pictures.append(buffer.getvalue())
    paths: list[Path] = []
    for i in range(n):
        picture, comment = pictures[i % variants], f"vicap bench image {i}".encode()
        segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
        path = folder / f"{i:06d}.jpg"
        path.write_bytes(picture[:2] + segment + picture[2:])
        paths.append(path)
    return paths


def _colour(rng: Any) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


@contextlib.contextmanager
def postgres_database(admin_url: str, name: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database ``name`` (dropped first if left over, and dropped afterwards); yields its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"), {"name": name}
            )
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))

    try:
        drop()
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        drop()
        admin.dispose()
