"""``vicap-jobs sweeps``: the table of a hyper-parameter sweep, one row per grid point beside the blind baseline."""

from __future__ import annotations

import click

from vicap_jobs.cli.common import console, err_console, open_store, print_table
from vicap_jobs.cli.outputs import out_option
from vicap_jobs.errors import InputError, NotFoundError
from vicap_jobs.services.outputs import write_output
from vicap_jobs.services.sweep_reports import Stat, SweepReport, render_runs, sweep_report
from vicap_jobs.services.sweeps import METRICS, find_sweep_id

NAMES = {"bleu_1": "BLEU-1", "bleu_2": "BLEU-2", "bleu_3": "BLEU-3", "bleu_4": "BLEU-4", "rouge_l": "ROUGE-L"}
NAMES["cider_d"] = "CIDEr-D"
MISSING = "–"


@click.group()
def sweeps() -> None:
    """Show hyper-parameter sweeps (submitted with `vicap-jobs submit sweep`).

    Example:

    \b
        vicap-jobs sweeps show lr-study
        vicap-jobs sweeps show lr-study --format csv --out s3://team-bucket/sweeps/lr-study.csv
    """


@sweeps.command()
@click.argument("name")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table: one row per grid point (mean ± std over repeats); csv/json: one raw row per run.",
)
@out_option("File for --format csv or json")
def show(name: str, fmt: str, out: str | None) -> None:
    """Test scores of sweep NAME per grid point (mean ± std over repeats) beside the blind baseline.

    Scores are on the test split, ×100. Rows marked `below baseline` did not beat
    the blind baseline on BLEU-4 and ROUGE-L (a model that produced no caption
    scores 0). Promote the best run with `vicap-jobs models promote RUN NAME`.

    Example:

    \b
        vicap-jobs sweeps show lr-study
        vicap-jobs sweeps show lr-study --format json
        vicap-jobs sweeps show lr-study --format csv --out s3://team-bucket/sweeps/lr-study.csv
    """
    if out is not None and fmt == "table":
        raise InputError("--out writes --format csv or json; add one of them")
    _, db = open_store()
    report = sweep_report(db=db, name=name)
    if fmt == "table":
        _print_report(report)
        return
    text = render_runs(report, fmt)
    if out is None:
        click.echo(text, nl=False)
        return
    shown = write_output(out, text)
    err_console.print(f"{len(report.runs)} run(s) of sweep {name} written to {shown}", markup=False)


@sweeps.command()
@click.argument("name")
def retry(name: str) -> None:
    """Re-queue only the failed runs of finished sweep NAME and publish them now (same as `jobs retry PARENT`).

    Example:

    \b
        vicap-jobs sweeps retry lr-study
    """
    from vicap_jobs.worker.publish import retry_and_publish  # imports Celery: only for commands that publish

    _, db = open_store()
    parent_id = find_sweep_id(db=db, name=name)
    if parent_id is None:
        raise NotFoundError(f"no sweep named {name!r}")
    _, run_ids = retry_and_publish(db=db, job_id=parent_id)
    console.print(f"sweep {name} (job {parent_id}): {len(run_ids)} failed run(s) re-queued: jobs {run_ids}")


def _metric(name: str, stat: Stat | None) -> str:
    """BLEU and ROUGE-L ×100 with one decimal; CIDEr-D on its own scale (pycocoevalcap's, ×10) with two."""
    return _plain(stat, 2) if name == "cider_d" else _score(stat)


def _score(stat: Stat | None) -> str:
    if stat is None:
        return MISSING
    text = f"{100 * stat.mean:.1f}"
    return f"{text} ± {100 * stat.std:.1f}" if stat.n > 1 else text


def _plain(stat: Stat | None, digits: int) -> str:
    if stat is None:
        return MISSING
    text = f"{stat.mean:.{digits}f}"
    return f"{text} ± {stat.std:.{digits}f}" if stat.n > 1 else text


def _print_report(report: SweepReport) -> None:
    columns = ["grid point", "runs", *(NAMES[m] for m in METRICS), "best epoch", "val loss", "train s", "params", ""]
    rows: list[list[object]] = []
    for point in report.points:
        stats = point.stats
        params = stats["trainable_parameters"]
        rows.append(
            [
                point.label,
                f"{point.succeeded}/{point.runs}",
                *(_metric(m, stats[m]) for m in METRICS),
                _plain(stats["best_epoch"], 1),
                _plain(stats["val_loss"], 3),
                _plain(stats["train_seconds"], 0),
                f"{params.mean:,.0f}" if params else MISSING,
                "" if point.beats_baseline else "✗ below baseline",
            ]
        )
    if report.baseline is not None:
        rows.append(
            [
                "blind baseline",
                "",
                *(
                    _metric(m, None if report.baseline[m] is None else Stat(report.baseline[m] or 0.0, 0.0, 1))
                    for m in METRICS
                ),
                "",
                "",
                "",
                "",
                "",
            ]
        )
    print_table(
        f"sweep {report.name} (job {report.job_id}, {report.status}, {report.done}/{report.total} runs ended) "
        f"on {report.dataset}/test, ×100, mean ± std over repeats",
        columns,
        rows,
    )
    failed = [run for run in report.runs if run.error]
    for run in failed:
        console.print(f"{run.model} (job {run.job_id}) {run.status}: {run.error}")
