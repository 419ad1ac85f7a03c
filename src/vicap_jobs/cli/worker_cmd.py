"""``vicap-jobs worker``: a Celery worker, one per GPU (or a CPU worker)."""

from __future__ import annotations

import click

from vicap_jobs.errors import InputError
from vicap_jobs.jobs.queues import SHARED_QUEUE, device_label, gpu_queue
from vicap_jobs.settings import get_settings
from vicap_jobs.worker.gpu import node_name, pin_gpu


@click.command()
@click.option(
    "--gpu",
    type=int,
    default=None,
    metavar="N",
    help="Pin to GPU N (CUDA_VISIBLE_DEVICES=N); consumes queue gpu.N and the shared one.",
)
@click.option("--cpu", "cpu", is_flag=True, help="Run on the CPU (the default when --gpu is not given).")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Worker processes; keep 1 on a GPU.")
@click.option(
    "--queues", default=None, help="Extra comma-separated queues to consume, beside the shared one and gpu.N."
)
@click.option("--name", default=None, help="Node name (default: gpuN@host or cpu@host); must be unique per host.")
@click.option("--loglevel", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
def worker(gpu: int | None, cpu: bool, concurrency: int, queues: str | None, name: str | None, loglevel: str) -> None:
    """Start a worker that runs queued jobs (caption chunks, train, export, evaluate).

    One worker per GPU: `--gpu N` pins the process to GPU N before torch is
    imported and consumes its own queue `gpu.N` plus the shared queue `vicap`.
    Models are loaded after the fork and cached per process. The worker records
    a heartbeat in the `workers` table and re-enqueues chunks of workers that
    went silent for VICAP_STALE_AFTER_S seconds.

    Monitor with Flower (`pip install "vicap-jobs[monitor]"`) against the same broker:
    `celery -A vicap_jobs.worker.app flower`.

    Example:

    \b
        vicap-jobs worker --gpu 0 &
        vicap-jobs worker --gpu 1 &
        VICAP_BROKER_URL=redis://127.0.0.1:6379/0 vicap-jobs worker --cpu --concurrency 2
    """

    if gpu is not None and cpu:
        raise InputError("choose either --gpu N or --cpu")
    if concurrency < 1:
        raise InputError("--concurrency must be at least 1")
    if gpu is not None and concurrency != 1:
        raise InputError("a GPU worker runs one process (--concurrency 1); start one worker per GPU instead")
    pin_gpu(gpu)  # before anything imports torch

    from vicap_jobs.worker.app import app  # after pin_gpu: nothing may import torch before it

    get_settings()  # fail on bad settings now, as a one-line error
    consume = [SHARED_QUEUE] + ([gpu_queue(gpu)] if gpu is not None else [])
    consume += [q.strip() for q in (queues or "").split(",") if q.strip() and q.strip() not in consume]
    node = node_name(gpu, name)
    click.echo(f"worker {node} on {device_label(gpu)}, queues: {', '.join(consume)}", err=True)
    app.worker_main(
        [
            "worker",
            f"--hostname={node}",
            f"--queues={','.join(consume)}",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            f"--loglevel={loglevel.upper()}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
