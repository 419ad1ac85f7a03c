"""Exporting a job's captions: COCO results JSON, CSV, or JSON Lines.

``coco-json`` is the COCO captioning *results* format, ``[{"image_id", "caption"}]``,
with the ORIGINAL COCO image ids (``images.coco_id``) for images imported from a
COCO-format data set, so the file goes straight into pycocotools'
``COCO.loadRes`` and pycocoevalcap's ``COCOEvalCap`` with that data set's
annotation file. Images without a COCO id (ad-hoc folders) use the store's
``images.id``. Only captioned (``ok``) images appear there; CSV and JSON Lines
carry every image, errors and their reasons included.

``viecap4h`` is the VLSP 2021 VieCap4H submission, ``[{"id": "<file name>",
"captions": "<text>"}]``. ``hf-jsonl`` is one ``{"image": "<absolute path>",
"file_name": ..., "text": ...}`` object per line (``image`` is the object URL as is for photos in object
storage), which Hugging Face
``datasets.load_dataset("json", data_files=...)`` loads as is (cast ``image``
to ``datasets.Image()`` to decode the photos; checked by hand with datasets 5.2.0 on
2026-11-30: 5 rows, images decoded, Vietnamese text intact; ``datasets`` is not a dependency, the
tests check the shape). Both list captioned images only.

``out`` is a local path or an object storage URL (``s3://bucket/key.json``), written whole or not
at all by ``services.outputs.write_output``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Image, Job
from vicap_jobs.errors import InputError, NotFoundError, UnknownNameError
from vicap_jobs.jobs.lifecycle import get_job
from vicap_jobs.services.outputs import write_output
from vicap_jobs.storage.locations import is_url

FORMATS = ("coco-json", "csv", "jsonl", "viecap4h", "hf-jsonl")
CAPTIONED_ONLY = frozenset({"coco-json", "viecap4h", "hf-jsonl"})  # formats that leave failed images out
COLUMNS = ("image_id", "coco_id", "file_name", "path", "status", "caption", "error", "engine", "latency_ms")


@dataclass(frozen=True)
class ExportedCaption:
    """One caption row with its image, as exported."""

    image_id: int
    coco_id: int | None
    file_name: str
    path: str
    status: str
    caption: str | None
    error: str | None
    engine: str
    latency_ms: float | None

    @property
    def results_id(self) -> int:
        """The id a COCO results file uses: the original COCO id when there is one."""
        return self.coco_id if self.coco_id is not None else self.image_id


def job_captions(*, db: Engine, job_id: int) -> Iterator[ExportedCaption]:
    """The job's caption rows joined with their images, in image order."""
    with session_scope(db) as session:
        if session.get(Job, job_id) is None:
            raise NotFoundError(f"no job with id {job_id}")
        rows = session.execute(
            select(
                Caption.image_id,
                Image.coco_id,
                Image.file_name,
                Image.path,
                Caption.status,
                Caption.text,
                Caption.error,
                Caption.engine,
                Caption.latency_ms,
            )
            .join(Image, Image.id == Caption.image_id)
            .where(Caption.job_id == job_id)
            .order_by(Caption.image_id)
        ).all()
    for row in rows:
        yield ExportedCaption(*row)


def render(captions: list[ExportedCaption], fmt: str) -> str:
    """The export file's text in ``fmt`` (one of FORMATS)."""
    ok = [c for c in captions if c.status == "ok"]
    if fmt == "coco-json":
        results = [{"image_id": c.results_id, "caption": c.caption} for c in ok]
        return json.dumps(results, ensure_ascii=False, indent=1) + "\n"
    if fmt == "viecap4h":
        submission = [{"id": c.file_name, "captions": c.caption} for c in ok]
        return json.dumps(submission, ensure_ascii=False, indent=1) + "\n"
    if fmt == "hf-jsonl":
        rows = ({"image": _absolute(c.path), "file_name": c.file_name, "text": c.caption} for c in ok)
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if fmt == "jsonl":
        return "".join(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in captions)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for c in captions:
            writer.writerow(asdict(c))
        return buffer.getvalue()
    raise UnknownNameError("export format", fmt, FORMATS)


def _absolute(path: str) -> str:
    """An image's location for a file that outlives this folder: an absolute path, or the URL as is."""
    return path if is_url(path) else os.path.abspath(path)


def export_captions(*, db: Engine, job_id: int, fmt: str, out: str | Path | None = None) -> tuple[str, int]:
    """Render the job's captions in ``fmt``; write them to ``out`` (a path or URL) when given.

    Returns (text, rows written).
    """
    if fmt not in FORMATS:
        raise UnknownNameError("export format", fmt, FORMATS)
    with session_scope(db) as session:
        job = get_job(session=session, job_id=job_id)
    if job.kind not in ("caption", "evaluate"):
        raise InputError(f"job {job_id} is a {job.kind} job; only caption and evaluate jobs have captions")
    captions = list(job_captions(db=db, job_id=job_id))
    if not captions:
        raise InputError(f"job {job_id} has no caption rows yet ({job.status})")
    text = render(captions, fmt)
    n_rows = sum(c.status == "ok" for c in captions) if fmt in CAPTIONED_ONLY else len(captions)
    if out is not None:
        write_output(out, text)
    return text, n_rows
