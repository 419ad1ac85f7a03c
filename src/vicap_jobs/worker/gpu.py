"""GPU pinning: one worker process per GPU, pinned before torch is imported.

``vicap-jobs worker --gpu N`` sets ``CUDA_VISIBLE_DEVICES=N`` in the worker's
environment before anything imports torch, so the process (and the pool child
it forks) sees exactly one GPU, as ``cuda:0``. ``--cpu`` hides every GPU.
On a machine without CUDA, ``--gpu N`` still consumes queue ``gpu.N`` and runs
on the CPU (how the tests simulate two GPUs), with a warning.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from vicap_jobs.errors import ConfigError, InputError
from vicap_jobs.jobs.queues import device_label

log = logging.getLogger(__name__)


def pin_gpu(index: int | None) -> None:
    """Make GPU ``index`` the only visible one (``None``: no GPU at all). Call before importing torch."""
    if index is not None and index < 0:
        raise InputError(f"--gpu must be a GPU index (0, 1, ...), got {index}")
    if "torch" in sys.modules:
        raise ConfigError(
            "torch was imported before the worker was pinned to a GPU; CUDA_VISIBLE_DEVICES would be ignored"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if index is None else str(index)


def node_name(gpu: int | None, name: str | None = None) -> str:
    """Celery node name (also the ``workers.name`` row): ``gpu1@host``, ``cpu@host``, or ``name``."""
    if name:
        return name if "@" in name else f"{name}@{socket.gethostname()}"
    return f"{device_label(gpu)}@{socket.gethostname()}"


def process_device() -> str:
    """The torch device of this (already pinned) process: ``cuda:0`` when a GPU is visible, else ``cpu``.

    Call it in the pool child, after the fork: it imports torch.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return "cpu"
    import torch  # heavy, and only after the fork: CUDA must not be touched in the parent

    if torch.cuda.is_available():
        return "cuda:0"
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pinned:
        log.warning("CUDA_VISIBLE_DEVICES=%s but no CUDA device is available; running on the CPU", pinned)
    return "cpu"


def set_torch_threads(threads: int | None) -> None:
    """torch's intra-op threads for this process (``VICAP_TORCH_THREADS``); None keeps torch's default."""
    if threads:
        import torch  # heavy: only in the pool child, after the fork

        torch.set_num_threads(threads)
