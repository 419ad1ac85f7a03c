"""Broker queue names: the routing contract between publishers and workers (keep them stable).

``vicap`` is consumed by every worker; ``gpu.N`` only by the worker started with ``--gpu N``.
A job records its queue at submit time (``jobs.queue``), so a recovered job or chunk goes back to
the GPU it was pinned to. No Celery import here: these are plain strings.
"""

from __future__ import annotations

from vicap_jobs.errors import InputError

SHARED_QUEUE = "vicap"
GPU_QUEUE_PREFIX = "gpu."


def gpu_queue(index: int) -> str:
    """The queue only the worker pinned to GPU ``index`` consumes."""
    if index < 0:
        raise InputError(f"a GPU index is 0, 1, ...; got {index}")
    return f"{GPU_QUEUE_PREFIX}{index}"


def queue_for_gpu(gpu: int | None) -> str:
    """``gpu.N`` for work pinned to GPU N, else the shared queue."""
    return SHARED_QUEUE if gpu is None else gpu_queue(gpu)


def device_label(gpu: int | None) -> str:
    """Short human name of a worker's or a pinned job's device: ``gpu0``, ``gpu1``, ``cpu``."""
    return "cpu" if gpu is None else f"gpu{gpu}"
