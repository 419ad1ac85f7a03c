"""``vicap-jobs captions``: export a job's captions."""

from __future__ import annotations

import click

from vicap_jobs.cli.common import err_console, open_store
from vicap_jobs.cli.outputs import out_option
from vicap_jobs.services.captions_export import FORMATS, export_captions
from vicap_jobs.storage.redact import redact


@click.group()
def captions() -> None:
    """Get generated captions out of the store (or query the `captions` table with SQL).

    Example:

    \b
        vicap-jobs captions export 12 --format csv --out captions.csv
    """


@captions.command()
@click.argument("job_id", type=int)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="coco-json", show_default=True)
@out_option()
def export(job_id: int, fmt: str, out: str | None) -> None:
    """Export the captions of caption or evaluate job JOB_ID.

    `coco-json` is the COCO results format `[{"image_id", "caption"}]` with the
    original COCO image ids of COCO-imported data sets, ready for pycocotools'
    `COCO.loadRes` and pycocoevalcap's `COCOEvalCap`; it lists captioned images
    only. `csv` and `jsonl` list every image, with status and error reason.
    `viecap4h` is the VieCap4H submission `[{"id": file name, "captions"}]`;
    `hf-jsonl` is `{"image": absolute path, "file_name", "text"}` per line, for
    Hugging Face `datasets.load_dataset("json", data_files=...)`. Both list
    captioned images only.

    `--out` takes a local path or an object storage URL (`s3://`, `gs://`, any
    fsspec URL); credentials come from the storage library's usual places
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL, profiles,
    instance roles).

    Example:

    \b
        vicap-jobs captions export 12 --format coco-json --out results.json
        vicap-jobs captions export 12 --format viecap4h --out results.json
        vicap-jobs captions export 12 --format hf-jsonl --out train.jsonl
        vicap-jobs captions export 12 --format jsonl | head
        vicap-jobs captions export 12 --format csv --out s3://team-bucket/exports/job-12.csv
    """

    _, db = open_store()
    text, n_rows = export_captions(db=db, job_id=job_id, fmt=fmt, out=out)
    if out is None:
        click.echo(text, nl=False)
    else:
        err_console.print(f"{n_rows} caption(s) of job {job_id} written to {redact(out)}", markup=False)
