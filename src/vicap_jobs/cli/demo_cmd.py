"""``vicap-jobs demo``: the whole product on the embedded default, in one command.

Synthetic data set → train cnn-lstm-attn (tiny backbone) → ONNX export →
a background worker → caption job through the queue → evaluation through the
queue → model vs blind baseline, images/s, and SQL to try on the store.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from sqlalchemy import Engine

from vicap_jobs.cli.common import console, print_table
from vicap_jobs.cli.scores_cmd import SCALE_NOTE, cider_text
from vicap_jobs.cli.waiting import LocalWorker, wait_for_job
from vicap_jobs.db.store import open_engine
from vicap_jobs.errors import NotFoundError
from vicap_jobs.jobs.queries import JobSummary
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.services.datasets import create_synth_dataset, get_dataset
from vicap_jobs.services.evaluation import create_evaluate_job
from vicap_jobs.services.exporting import export_model
from vicap_jobs.services.scores import ScoreRow, latest_scores
from vicap_jobs.services.training import create_train_job, train_in_process
from vicap_jobs.services.workers import live_workers
from vicap_jobs.settings import Settings, get_settings, mask_password, reset_settings


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run; --fast is for CI and first impressions."""

    n_images: int
    image_size: int
    epochs: int
    dataset: str


FULL = DemoPlan(n_images=1000, image_size=96, epochs=8, dataset="viic-synth-demo")
FAST = DemoPlan(n_images=500, image_size=64, epochs=8, dataset="viic-synth-demo-fast")

EXAMPLE_QUERIES = (
    (
        "captions of the demo's caption job",
        "SELECT i.file_name, c.text, c.latency_ms FROM captions c JOIN images i ON i.id = c.image_id WHERE c.job_id = {job} LIMIT 10;",
    ),
    (
        "latest scores beside the blind baseline",
        "SELECT model_name, dataset_name, split, is_baseline, round(bleu_4 * 100, 1) AS bleu4, round(rouge_l * 100, 1) AS rouge_l FROM latest_scores ORDER BY dataset_name, split, is_baseline;",
    ),
    (
        "failures by reason",
        "SELECT substr(error, 1, 40) AS reason, count(*) FROM captions WHERE status = 'error' GROUP BY reason ORDER BY count(*) DESC;",
    ),
)


@click.command()
@click.option("--fast", is_flag=True, help="A smaller set and fewer epochs (about a minute or two).")
@click.option("--broker", help="Run through this broker instead of the embedded one, e.g. redis://127.0.0.1:6379/0.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(fast: bool, broker: str | None, seed: int) -> None:
    """Run the whole pipeline on a synthetic Vietnamese sports set, with no server, GPU or download.

    Generates the data set, trains a CNN+LSTM with attention, exports it to ONNX,
    starts a worker in the background, captions the test images through the
    queue, evaluates through the queue, and prints the scores beside the blind
    baseline with SQL to try on the store. Under 5 minutes on a 2-core CPU.

    Example:

    \b
        vicap-jobs demo
        vicap-jobs demo --fast
        vicap-jobs demo --broker redis://127.0.0.1:6379/0
    """
    if broker:
        os.environ["VICAP_BROKER_URL"] = broker
        reset_settings()
    plan = FAST if fast else FULL
    settings = get_settings()
    db = open_engine(settings)
    started = time.perf_counter()
    console.rule("vicap-jobs demo")
    console.print(
        f"store  {mask_password(settings.effective_database_url)}\nbroker {mask_password(settings.effective_broker_url)}"
    )
    _step(1, "synthetic data set")
    test_dir = _ensure_dataset(db, plan, seed)
    _step(2, "train cnn-lstm-attn (tiny backbone)")
    model = _train(db, plan, seed)
    _step(3, "export ONNX (verified against torch)")
    _export(db, model)
    _step(4, "start a background worker")
    worker = LocalWorker(job_id=0, gpu=None, settings=settings)
    worker.log_path = settings.home / "logs" / "demo-worker.log"
    try:
        worker.start()
        _wait_for_worker(db, worker)
        _step(5, "caption the test images through the queue")
        caption_summary = _caption(db, model, test_dir)
        _step(6, "evaluate through the queue")
        evaluation = _evaluate(db, model, plan)
    finally:
        worker.stop()
    _report(settings, model, plan, caption_summary, evaluation, time.perf_counter() - started)


def _step(number: int, title: str) -> None:
    console.print(f"\n[bold]{number}/6 {title}[/]")


def _ensure_dataset(db: Engine, plan: DemoPlan, seed: int) -> Path:
    out_dir = get_settings().datasets_dir / plan.dataset
    try:
        get_dataset(db=db, name=plan.dataset)
        console.print(f"reusing data set {plan.dataset!r} ({out_dir})")
    except NotFoundError:
        with console.status(f"drawing {plan.n_images} images"):
            reports = create_synth_dataset(
                db=db,
                name=plan.dataset,
                n_images=plan.n_images,
                seed=seed,
                size=plan.image_size,
                out_dir=out_dir,
                overwrite=True,
            )
        console.print(", ".join(f"{r.split}: {r.n_images} images" for r in reports))
    return out_dir / "images" / "test"


def _train(db: Engine, plan: DemoPlan, seed: int) -> str:
    name = f"demo-attn-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    options = {
        "backbone": "tiny",
        "backbone_weights": "random",
        "finetune_backbone": True,
        "image_size": plan.image_size,
        "epochs": plan.epochs,
        "seed": seed,
    }
    job_id = create_train_job(db=db, name=name, family="cnn-lstm-attn", dataset=plan.dataset, options=options)
    outcome = train_in_process(db=db, job_id=job_id)
    console.print(f"model {name!r}: {outcome.message}")
    return name


def _export(db: Engine, model: str) -> None:
    with console.status("exporting"):
        summary = export_model(db=db, model=model)
    console.print(summary)


def _wait_for_worker(db: Engine, worker: LocalWorker, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    with console.status("waiting for the worker to come up"):
        while not live_workers(db=db):
            if worker.exit_code() is not None:
                raise click.ClickException(f"the worker exited with code {worker.exit_code()}; see {worker.log_path}")
            if time.monotonic() > deadline:
                raise click.ClickException(f"the worker did not come up in {timeout_s:.0f}s; see {worker.log_path}")
            time.sleep(0.5)
    console.print(f"worker up (log: {worker.log_path})")


def _wait(db: Engine, job_id: int, label: str) -> JobSummary:
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(label, total=None)
        summary = wait_for_job(
            db=db, job_id=job_id, on_progress=lambda s: progress.update(task, total=s.total or None, completed=s.done)
        )
    if summary.status != "succeeded":
        raise click.ClickException(f"job {job_id} {summary.status}: {summary.error}")
    return summary


def _caption(db: Engine, model: str, folder: Path) -> JobSummary:
    from vicap_jobs.worker.publish import publish_job  # the Celery app reads --broker, set above, at import

    plan = create_caption_job(
        db=db, folder=folder, model=model, engine_name="onnx", recursive=False, batch_size=16, chunk_size=64
    )
    publish_job(db=db, job_id=plan.job_id)
    console.print(f"caption job {plan.job_id}: {plan.n_images} images in {len(plan.chunk_ids)} chunks")
    return _wait(db, plan.job_id, f"caption job {plan.job_id}")


def _evaluate(db: Engine, model: str, plan: DemoPlan) -> ScoreRow:
    from vicap_jobs.worker.publish import publish_job  # the Celery app reads --broker, set above, at import

    job_id = create_evaluate_job(db=db, model=model, dataset=plan.dataset, split="test", engine_name="onnx")
    publish_job(db=db, job_id=job_id)
    _wait(db, job_id, f"evaluate job {job_id}")
    return next(r for r in latest_scores(db=db, dataset=plan.dataset) if r.model == model)


def _report(
    settings: Settings, model: str, plan: DemoPlan, caption_summary: JobSummary, row: ScoreRow, seconds: float
) -> None:
    console.rule("result")
    scale = [100 * v for v in (row.bleu_1, row.bleu_2, row.bleu_3, row.bleu_4, row.rouge_l)]
    rows = [[model, *scale, cider_text(row.cider_d)]]
    if row.baseline_bleu_4 is not None and row.baseline_rouge_l is not None:
        baseline = [100 * row.baseline_bleu_4, 100 * row.baseline_rouge_l, cider_text(row.baseline_cider_d)]
        rows.append(["blind baseline", None, None, None, *baseline])
    print_table(
        f"{plan.dataset} test ({row.n_images} images, syllable tokens; {SCALE_NOTE})",
        ["", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"],
        rows,
    )
    throughput = caption_summary.throughput or 0.0
    console.print(
        f"MODEL_BLEU4={100 * row.bleu_4:.2f} BASELINE_BLEU4={100 * (row.baseline_bleu_4 or 0):.2f} "
        f"MODEL_ROUGE_L={100 * row.rouge_l:.2f} BASELINE_ROUGE_L={100 * (row.baseline_rouge_l or 0):.2f}"
    )
    console.print(f"captioning through the queue: {throughput:.1f} images/s (job {caption_summary.id}, onnx engine)")
    console.print(f"total demo time: {seconds:.0f}s")
    url = settings.effective_database_url
    where = url.removeprefix("sqlite:///") if url.startswith("sqlite") else mask_password(url)
    console.print(f"\nthe store: {where}\ntry:")
    tool = f"sqlite3 {where}" if url.startswith("sqlite") else "psql"
    for title, sql in EXAMPLE_QUERIES:
        console.print(f'  -- {title}\n  {tool} "{sql.format(job=caption_summary.id)}"')
    console.print("\nsee it in a browser: run `vicap-jobs web`, then open")
    console.print(f"  http://127.0.0.1:8000/jobs/{caption_summary.id}  (the captions as a gallery)")
    console.print(f"  http://127.0.0.1:8000/models/{model}  (its scores over time)")
