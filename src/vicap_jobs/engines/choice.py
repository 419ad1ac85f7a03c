"""Which engine captions a model when none is asked for: measured once per model and machine, then cached.

A family's registry line names its static default engine (the first) and may name
engines it *prefers* when they are at least as fast here (``FamilySpec.prefer``; the
vision-language families prefer ``int8``). Whether int8 beats fp32 depends on the
machine (int8 kernels: VNNI/AMX on x86 CPUs; bitsandbytes on a GPU is often slower
than fp16), so the choice is measured, not assumed: the default engine and the
candidate caption the same :data:`N_IMAGES` synthetic images at the model's
preprocessing size (greedy, :data:`MAX_LEN` tokens): after a warm-up run each, they
run alternately :data:`REPEATS` times and each engine's best run counts (a load
change on a shared machine then hits both alike). The candidate wins when it takes no longer than the default and its token ids
equal the default's on at least :data:`MIN_AGREEMENT` of the images: int8 rounding
may flip a near-tie between two tokens on one image, a broken path changes most.

The result (engine, reason, timings, agreement, int8 path) is a JSON file under
``<cache_dir>/engine-choice/``, one per (weights identity, machine signature): the
CPU model, device (and GPU model), torch threads, the torch / transformers / torchao /
bitsandbytes versions, and the calibration protocol, written atomically. The weights
identity is the weight files' paths, sizes and modification times (hashing 15 GB on
every lookup would cost more than the choice saves). A measurement that cannot run
here (the device is absent) or whose candidate failed (out of memory, a broken
install) falls back to the static default and is not cached: it is tried again.

This module imports no torch: the services read a cached choice without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from vicap_jobs.engines import load_engine
from vicap_jobs.engines.base import CaptionEngine, DecodeOptions
from vicap_jobs.errors import VicapError
from vicap_jobs.models.manifest import ModelArtifacts, read_manifest, weight_files
from vicap_jobs.models.registry import FamilySpec, get_family
from vicap_jobs.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)

CHOICE_DIR = "engine-choice"
PROTOCOL = 1  # bump when the calibration below changes: older cached choices are then measured again
N_IMAGES = 8
MAX_LEN = 12
MIN_AGREEMENT = 0.875  # 7 of 8 calibration images with identical ids
REPEATS = 3  # timed runs per engine, alternating; the best counts

Timer = Callable[[CaptionEngine, np.ndarray], float]
Loader = Callable[..., CaptionEngine]


@dataclass(frozen=True)
class EngineChoice:
    """The engine a model runs with by default here, and why.

    engine: the chosen engine; reason: one line for ``models show``; default: the family's
    static default; candidate: the engine measured against it (None: nothing measured);
    seconds: calibration time per engine; agreement: share of calibration images with
    identical ids; int8_path: the candidate's int8 path ("label, DEVICE") when it has one;
    cached: read from the cache rather than measured now; failed: the candidate could not run.
    """

    engine: str
    reason: str
    default: str
    candidate: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    agreement: float | None = None
    int8_path: str | None = None
    signature: dict[str, str] = field(default_factory=dict)
    weights: str | None = None
    cached: bool = False
    failed: bool = False  # the candidate could not load or run here (never cached)

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "cached"}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineChoice:
        return cls(**{**data, "cached": True})


def weights_identity(checkpoint_dir: Path) -> str:
    """A digest of the weight files' paths, sizes and modification times: which weights, without reading them.

    Hashing the bytes (``weights_sha256``) costs 10-30 s for a 15 GB BLIP-2 on every
    lookup; a retrained or re-saved checkpoint writes new files, so new times.
    """
    checkpoint_dir = Path(checkpoint_dir)
    digest = hashlib.sha256()
    for file in weight_files(checkpoint_dir, read_manifest(checkpoint_dir)):
        stat = file.stat()
        digest.update(f"{file.relative_to(checkpoint_dir).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere ``platform.processor()``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_signature(device: str, threads: int | None) -> dict[str, str]:
    """What a measured choice depends on besides the weights (torch is not imported for it)."""
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "none"
    signature = {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "device": device,
        "threads": str(threads) if threads else "default",
        "torch": torch_version,
        "protocol": str(PROTOCOL),
    }
    for package in ("transformers", "torchao", "bitsandbytes"):  # their kernels decide int8 speed too
        try:
            signature[package] = version(package)
        except PackageNotFoundError:
            signature[package] = "none"
    if device.startswith("cuda"):
        signature["gpu"] = _gpu_name(device)
    return signature


def _gpu_name(device: str) -> str:
    """The CUDA device's name (a GPU choice is measured per GPU model)."""
    import torch  # only for a CUDA device, where the engines import torch anyway

    index = int(device.partition(":")[2] or 0)
    return str(torch.cuda.get_device_name(index)) if torch.cuda.is_available() else "absent"


def cache_file(weights: str, signature: Mapping[str, str], candidates: Sequence[str]) -> Path:
    """``<cache_dir>/engine-choice/<weights>-<signature>.json``."""
    key = json.dumps({"machine": dict(signature), "candidates": list(candidates)}, sort_keys=True)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return get_settings().cache_dir / CHOICE_DIR / f"{weights[:24]}-{digest}.json"


def read_cached(path: Path, weights: str, signature: Mapping[str, str], engines: Sequence[str]) -> EngineChoice | None:
    """The choice stored at ``path`` when it is for these weights on this machine; else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        choice = EngineChoice.from_json(data)
    except (OSError, ValueError, TypeError):
        return None
    if choice.weights != weights or choice.signature != dict(signature):
        return None
    if choice.engine not in engines:  # a hand-edited or stale file never picks an engine the family lacks
        return None
    return choice


def write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(dict(data), fh, ensure_ascii=False, indent=1)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: workers running as another user read it too
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def calibration_images(size: int, n: int = N_IMAGES, seed: int = 0) -> list[Image.Image]:
    """``n`` fixed synthetic RGB images: a colour field with a brighter block and noise (same every time)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        pixels = np.empty((size, size, 3), dtype=np.float32)
        pixels[:] = rng.integers(0, 256, 3)
        y, x = rng.integers(0, max(1, size // 2), 2)
        pixels[y : y + size // 2, x : x + size // 2] = rng.integers(0, 256, 3)
        pixels += rng.normal(0, 12, pixels.shape)
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return images


def time_forward(engine: CaptionEngine, pixels: np.ndarray) -> float:
    """Seconds of one forward pass (encoder + search) of ``engine`` over ``pixels``."""
    started = time.perf_counter()
    engine._forward(pixels)
    return time.perf_counter() - started


def agreement(tokens: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> float:
    """Share of images whose generated ids equal the reference's."""
    return sum(list(a) == list(b) for a, b in zip(tokens, reference, strict=True)) / max(len(reference), 1)


def _int8_path(engine: CaptionEngine) -> str | None:
    path = getattr(engine, "int8_path", None)
    label = getattr(path, "label", None)
    return f"{label}, {engine.device.upper()}" if label else None


def measure(
    artifacts: ModelArtifacts,
    *,
    default: str,
    candidate: str,
    device: str,
    threads: int | None,
    timer: Timer | None = None,
    load: Loader | None = None,
) -> EngineChoice:
    """Calibrate ``candidate`` against ``default`` on this machine and decide (not cached here).

    A default engine that cannot load raises; a candidate that cannot load or run gives
    the default with the one-line reason.
    """
    load = load or load_engine
    timer = timer or time_forward
    decode = DecodeOptions(beam_size=1, max_len=MAX_LEN)
    reference = load(default, artifacts, device=device, threads=threads, decode=decode)
    pixels = reference.preprocess(calibration_images(reference.preprocessing.size))
    reference_ids = reference._forward(pixels)  # also its warm-up
    seconds = {default: float("inf"), candidate: float("inf")}
    try:
        engine = load(candidate, artifacts, device=device, threads=threads, decode=decode)
        agreed = agreement(engine._forward(pixels), reference_ids)
        for _ in range(REPEATS):  # alternating: a load change on a shared machine hits both alike
            for name, timed in ((default, reference), (candidate, engine)):
                seconds[name] = min(seconds[name], timer(timed, pixels))
    except (VicapError, RuntimeError, ValueError, ImportError, TypeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return EngineChoice(default, f"{default}: {candidate} failed here ({first})", default, candidate, failed=True)
    precision = reference.precision
    path = _int8_path(engine)
    speedup = seconds[default] / max(seconds[candidate], 1e-9)
    what = f"{candidate} ({path})" if path else candidate
    if seconds[candidate] > seconds[default]:
        engine_name, reason = default, f"{default}: {what} was {speedup:.2f}x {precision} here"
    elif agreed < MIN_AGREEMENT:
        engine_name = default
        reason = f"{default}: {what} gave the same tokens on only {agreed:.0%} of images (< {MIN_AGREEMENT:.0%})"
    else:
        engine_name = candidate
        reason = f"{what}: {speedup:.2f}x {precision} on this machine, {agreed:.0%} same tokens"
    return EngineChoice(engine_name, reason, default, candidate, seconds, agreed, path)


def choose_engine(
    artifacts: ModelArtifacts,
    spec: FamilySpec | None = None,
    *,
    device: str = "cpu",
    threads: int | None = None,
    timer: Timer | None = None,
    load: Loader | None = None,
) -> EngineChoice:
    """The default engine of the model at ``artifacts`` on this machine (measured once, then cached).

    spec: the model's family (default: read from the manifest). A family that prefers
    nothing gets its static default unmeasured. Candidates are tried in ``spec.prefer``
    order; the first that wins is chosen.
    """
    spec = spec or get_family(read_manifest(artifacts.checkpoint_dir)["family"])
    default = spec.default_engine
    if not spec.prefer:
        return EngineChoice(default, f"{default}: the family's default", default)
    weights = weights_identity(artifacts.checkpoint_dir)
    signature = machine_signature(device, threads)
    path = cache_file(weights, signature, spec.prefer)
    cached = read_cached(path, weights, signature, spec.engine_names)
    if cached is not None:
        return cached
    log.info("measuring %s against %s once for this model on this machine", ", ".join(spec.prefer), default)
    choice: EngineChoice | None = None
    for candidate in spec.prefer:
        try:
            choice = measure(
                artifacts, default=default, candidate=candidate, device=device, threads=threads, timer=timer, load=load
            )
        except (VicapError, RuntimeError) as exc:  # the default itself cannot run here: nothing to compare
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return EngineChoice(default, f"{default}: not measured on {device} here ({first})", default)
        if choice.engine == candidate:
            break
    assert choice is not None  # spec.prefer is not empty
    choice = EngineChoice(**{**asdict(choice), "signature": signature, "weights": weights, "cached": False})
    if not choice.failed:  # a candidate that failed (out of memory, a broken install) is tried again next time
        write_atomic(path, choice.to_json())
    return choice
