"""``vicap-jobs submit``: create a job, enqueue its ids, print its id at once (``--wait``: follow it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine

from vicap_jobs.cli import choices
from vicap_jobs.cli.common import console, err_console, open_store
from vicap_jobs.cli.train_options import describe_inputs, options_from_cli, train_arguments
from vicap_jobs.cli.waiting import LocalWorker, wait_for_job
from vicap_jobs.jobs.queries import JobSummary
from vicap_jobs.services.captioning import CaptionJobPlan, create_caption_job
from vicap_jobs.services.evaluation import create_evaluate_job
from vicap_jobs.services.exporting import create_export_job
from vicap_jobs.services.sweeps import create_sweep, parse_grid
from vicap_jobs.services.training import create_train_job
from vicap_jobs.services.workers import live_workers, start_worker_hint
from vicap_jobs.storage.locations import is_url
from vicap_jobs.storage.redact import redact


def _wait_option(command: Any) -> Any:
    return click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends.")(command)


def _gpu_option(command: Any) -> Any:
    return click.option(
        "--gpu",
        type=click.IntRange(0),
        default=None,
        metavar="N",
        help="Run on the worker pinned to GPU N (queue gpu.N).",
    )(command)


@click.group()
def submit() -> None:
    """Queue a job for the workers: caption a folder, train, export or evaluate a model.

    Each command prints the job id at once; `--wait` follows the job with a
    progress bar (starting a local worker when none is running). Follow a job
    later with `vicap-jobs jobs show ID`.

    Example:

    \b
        vicap-jobs submit caption --dir photos/ --recursive --wait
        vicap-jobs submit evaluate --model synth-attn --dataset viic-synth --split test
    """


@submit.command()
@click.option(
    "--dir",
    "folder",
    required=True,
    help="Folder of images: a local path, or an object storage prefix (s3://bucket/photos/, gs://, az://).",
)
@click.option("--model", default=None, help="Registered model name (default: the newest).")
@click.option(
    "--engine",
    type=choices.ENGINE,
    default=None,
    help="Inference engine (default: the family's, onnx once exported).",
)
@click.option("--recursive", is_flag=True, help="Also caption images in sub-folders.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True, help="Images per engine call.")
@click.option(
    "--chunk-size", type=click.IntRange(1), default=None, help="Images per chunk (one task); default VICAP_CHUNK_SIZE."
)
@click.option(
    "--skip-known",
    is_flag=True,
    help="Caption only files whose content (sha256) has no ok caption yet from this model, engine and decoding; "
    "the others get a copy of that caption in the new job.",
)
@_gpu_option
@_wait_option
def caption(
    folder: str,
    model: str | None,
    engine: str | None,
    recursive: bool,
    batch_size: int,
    chunk_size: int | None,
    skip_known: bool,
    gpu: int | None,
    wait: bool,
) -> None:
    """Caption every image in a folder (jpg, jpeg, png, webp, bmp, gif) with a registered model.

    Images are registered (sha256) and split into chunks; each chunk writes one
    caption row per image, `ok` or `error` with a readable reason. Files that are
    images of an imported data set are captioned as those images, so a
    `--format coco-json` export carries the data set's COCO ids. With
    `--skip-known`, re-running over a growing archive captions only the new (or
    changed) photos: the rest get a copy of their earlier caption (same model,
    same engine; `--engine` unset matches only earlier jobs that also left it
    unset). Export the captions with `vicap-jobs captions export JOB`.

    A folder in object storage (`s3://bucket/prefix/`, any fsspec URL) is listed
    here and read by the workers, so workers on other hosts need no shared disk;
    credentials come from the storage library's usual places (AWS_* variables,
    profiles, instance roles). Its photos are hashed by the workers, so
    `--skip-known` is for local folders.

    Example:

    \b
        vicap-jobs submit caption --dir photos/ --wait
        vicap-jobs submit caption --dir photos/ --skip-known --wait
        vicap-jobs submit caption --dir s3://archive/2026/ --recursive
        vicap-jobs submit caption --dir /data/album --recursive --model synth-attn --engine onnx --gpu 1
    """

    settings, db = open_store()
    with console.status(f"listing and registering the photos of {redact(folder)}"):  # a spinner on a terminal only
        plan = create_caption_job(
            db=db,
            folder=folder if is_url(folder) else Path(folder),
            model=model,
            engine_name=engine,
            recursive=recursive,
            batch_size=batch_size,
            chunk_size=chunk_size or settings.chunk_size,
            gpu=gpu,
            skip_known=skip_known,
        )
    queue, _ = _publish(db, plan.job_id)
    console.print(_queued_line(plan, queue))
    if plan.skipped_dirs:
        err_console.print(f"note: {plan.skipped_dirs} folder(s) skipped (unreadable or a link loop)")
    if plan.chunk_ids or wait:  # a job whose every image was reused has already ended: no worker to wait for
        _follow(db, plan.job_id, gpu=gpu, wait=wait, unit="images")


def _queued_line(plan: CaptionJobPlan, queue: str) -> str:
    """What ``submit caption`` says about the job it made: images, chunks, and the reused and data set images."""
    notes = []
    if plan.n_reused:
        notes.append(f"{plan.n_reused} reused from earlier jobs (--skip-known)")
    if plan.n_linked:
        notes.append(f"{plan.n_linked} are images of an imported data set")
    tail = f"; {', '.join(notes)}" if notes else ""
    if not plan.chunk_ids:
        return f"job {plan.job_id} succeeded: all {plan.n_images} images were captioned before{tail}"
    return f"job {plan.job_id} queued: {plan.n_images} images in {len(plan.chunk_ids)} chunk(s) on queue {queue}{tail}"


@submit.command()
@train_arguments
@_gpu_option
@_wait_option
def train(gpu: int | None, wait: bool, **values: Any) -> None:
    """Train model NAME on a worker and register it (progress: epoch and loss on the job row).

    Takes the same options as `vicap-jobs train`. With `--gpu N` it runs on the
    worker pinned to GPU N (on its `cuda` device unless --device says otherwise).

    Example:

    \b
        vicap-jobs submit train synth-attn --family cnn-lstm-attn --backbone tiny --dataset viic-synth --epochs 12 --wait
        vicap-jobs submit train uit-dn201 --family cnn-lstm-attn --backbone densenet201 --dataset uitviic --gpu 0
        vicap-jobs submit train uit-blip --family blip --base-model ~/hf/blip-image-captioning-base \\
            --dataset uitviic --lr 5e-5 --batch-size 16 --gpu 0
    """

    name, family, dataset, options = options_from_cli(values)
    if gpu is not None:
        options.setdefault("device", "cuda")
    _, db = open_store()
    job_id = create_train_job(db=db, name=name, family=family, dataset=dataset, options=options, gpu=gpu)
    queue, _ = _publish(db, job_id)
    console.print(
        f"job {job_id} queued: train {name} ({family} / {describe_inputs(options)} on {dataset}) on queue {queue}"
    )
    _follow(db, job_id, gpu=gpu, wait=wait, unit="epochs")


@submit.command()
@click.argument("model")
@click.option(
    "--quantize",
    type=choices.QUANTIZATION,
    default=None,
    help="Static int8 (QDQ) quantization, calibrated on training images.",
)
@_wait_option
def export(model: str, quantize: str | None, wait: bool) -> None:
    """Export registered MODEL to ONNX (encoder_model.onnx + decoder_model.onnx), parity-checked.

    Example:

    \b
        vicap-jobs submit export synth-attn --wait
        vicap-jobs submit export synth-attn --quantize int8
    """

    _, db = open_store()
    job_id = create_export_job(db=db, model=model, quantize=quantize)
    _publish(db, job_id)
    console.print(f"job {job_id} queued: export {model}" + (f" ({quantize})" if quantize else ""))
    _follow(db, job_id, gpu=None, wait=wait, unit="steps")


@submit.command()
@click.option("--model", required=True, help="Registered model name.")
@click.option("--dataset", required=True, help="Data set name.")
@click.option("--split", type=choices.SPLIT, default="test", show_default=True)
@click.option("--tokenization", type=choices.TOKENIZATION, default="syllable", show_default=True)
@click.option("--engine", type=choices.ENGINE, default=None, help="Inference engine (default: the family's).")
@_gpu_option
@_wait_option
def evaluate(
    model: str, dataset: str, split: str, tokenization: str, engine: str | None, gpu: int | None, wait: bool
) -> None:
    """Caption a data set split with a model and store BLEU-1..4 / ROUGE-L beside the blind baseline.

    Example:

    \b
        vicap-jobs submit evaluate --model synth-attn --dataset viic-synth --split test --wait
        vicap-jobs scores
    """

    _, db = open_store()
    job_id = create_evaluate_job(
        db=db, model=model, dataset=dataset, split=split, tokenization=tokenization, engine_name=engine, gpu=gpu
    )
    queue, _ = _publish(db, job_id)
    console.print(f"job {job_id} queued: evaluate {model} on {dataset}/{split} on queue {queue}")
    _follow(db, job_id, gpu=gpu, wait=wait, unit="images")


@submit.command()
@train_arguments
@click.option(
    "--grid",
    "grids",
    multiple=True,
    required=True,
    metavar="OPTION=V1,V2,...",
    help="A training option and its values, repeatable (runs: every combination), e.g. lr=1e-3,5e-4,1e-4.",
)
@click.option(
    "--repeats", type=click.IntRange(1), default=1, show_default=True, help="Runs per grid point (seeds differ)."
)
@click.option("--force", is_flag=True, help="Queue even more runs than VICAP_MAX_SWEEP_RUNS.")
@_gpu_option
def sweep(grids: tuple[str, ...], repeats: int, force: bool, gpu: int | None, **values: Any) -> None:
    """Train model NAME at every grid point, REPEATS times each, then evaluate every run on val and test.

    One parent job and one child job per run (model `NAME-lr5e-4-r1`); N workers
    run N children at once. Follow it with `vicap-jobs sweeps show NAME`; `jobs
    cancel PARENT` cancels every run, `jobs retry PARENT` re-runs the failed ones.
    Takes the training options of `submit train`; the grid overrides them.

    Example:

    \b
        vicap-jobs submit sweep lr-study --family cnn-lstm-attn --dataset viic-synth --epochs 8 \\
            --grid lr=1e-3,5e-4,1e-4 --repeats 3
        vicap-jobs sweeps show lr-study
    """

    name, family, dataset, options = options_from_cli(values)
    if gpu is not None:
        options.setdefault("device", "cuda")
    _, db = open_store()
    plan = create_sweep(
        db=db,
        name=name,
        family=family,
        dataset=dataset,
        options=options,
        grid=parse_grid(grids),
        repeats=repeats,
        force=force,
        gpu=gpu,
    )
    assert plan.parent_id is not None
    console.print(f"sweep {name}: {plan.describe()}; parent job {plan.parent_id}")
    queue = None
    for child_id in plan.child_ids:
        queue, _ = _publish(db, child_id)
    console.print(f"{plan.n_runs} run(s) queued on queue {queue}: " + ", ".join(run[0] for run in plan.runs))
    _follow(db, plan.parent_id, gpu=gpu, wait=False, unit="runs")


# -- shared ---------------------------------------------------------------------------------


def _publish(db: Engine, job_id: int) -> tuple[str, int]:
    """Put the job's messages on its queue; returns (queue, messages)."""
    from vicap_jobs.worker.publish import publish_job  # imports Celery: only for commands that publish

    return publish_job(db=db, job_id=job_id)


def _follow(db: Engine, job_id: int, *, gpu: int | None, wait: bool, unit: str) -> None:
    """Without --wait: a hint when no worker is alive. With --wait: a progress bar, then the outcome."""
    if not wait:
        if not live_workers(db=db):
            err_console.print(start_worker_hint(gpu))
        console.print(f"follow it with: vicap-jobs jobs show {job_id}")
        return
    summary = _wait_with_progress(db, job_id, gpu=gpu, unit=unit)
    _print_outcome(summary)
    if summary.status != "succeeded":
        raise SystemExit(1)


def _wait_with_progress(db: Engine, job_id: int, *, gpu: int | None, unit: str) -> JobSummary:
    columns = [
        TextColumn("job {task.fields[job]} [bold]{task.fields[status]}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task("job", total=None, job=job_id, status="queued", extra="")

        def on_progress(s: JobSummary) -> None:
            extra = []
            if s.failed:
                extra.append(f"{s.failed} failed")
            if s.throughput and unit == "images":
                extra.append(f"{s.throughput:.1f} img/s")
            if s.progress_message and unit != "images":
                extra.append(s.progress_message)
            progress.update(task, total=s.total or None, completed=s.done, status=s.status, extra=" · ".join(extra))

        def on_local_worker(local: LocalWorker) -> None:
            progress.console.print(
                f"no worker is running: starting a local worker for job {job_id} (log: {local.log_path})"
            )

        return wait_for_job(db=db, job_id=job_id, on_progress=on_progress, gpu=gpu, on_local_worker=on_local_worker)


def _print_outcome(summary: JobSummary) -> None:
    line = f"job {summary.id} {summary.status}"
    if summary.kind in ("caption", "evaluate"):
        line += f": {summary.done - summary.failed} captioned, {summary.failed} failed"
        if summary.reused:
            line += f" ({summary.reused} of them reused from earlier jobs)"
    if summary.progress_message and summary.kind != "caption":
        line += f" ({summary.progress_message})"
    if summary.error:
        line += f"; {summary.error}"
    console.print(line)
    for reason, count in summary.errors_by_reason:
        console.print(f"  {count:>6} × {reason}")
