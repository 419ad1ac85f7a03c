"""The JSON API under ``/api``: what the CLI does with jobs, for scripts and other services.

Errors are ``{"error": "<one line>"}`` with 400 (bad input), 401 (no token), 403 (cross-site),
404 (unknown id or name), 413 (upload too large) or 422 (not a readable image).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.status import JobStatus
from vicap_jobs.jobs.queries import job_summary, list_jobs
from vicap_jobs.services.captions_export import FORMATS, export_captions
from vicap_jobs.services.models import list_models
from vicap_jobs.services.scores import latest_scores
from vicap_jobs.services.workers import list_workers
from vicap_jobs.web import actions
from vicap_jobs.web.app import state_of
from vicap_jobs.web.uploads import read_upload
from vicap_jobs.web.views import iso, job_json

router = APIRouter(prefix="/api", tags=["api"])

MEDIA_TYPES = {
    "coco-json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson; charset=utf-8",
    "viecap4h": "application/json",
    "hf-jsonl": "application/x-ndjson; charset=utf-8",
}
SUFFIXES = {"coco-json": "json", "csv": "csv", "jsonl": "jsonl", "viecap4h": "json", "hf-jsonl": "jsonl"}


class CaptionJobIn(BaseModel):
    """``POST /api/jobs/caption``: caption every image in a folder under VICAP_WEB_ROOTS."""

    folder: str = Field(description="Absolute path of a folder under one of VICAP_WEB_ROOTS.")
    model: str | None = Field(default=None, description="Registered model name (default: the newest).")
    engine: str | None = Field(default=None, description="Engine (default: the model's measured default).")
    recursive: bool = False
    batch_size: int = Field(default=16, ge=1, le=1024)
    gpu: int | None = Field(default=None, ge=0)
    skip_known: bool = Field(
        default=False, description="Reuse earlier captions of the same content by the same model and engine."
    )


@router.get("/jobs")
def jobs(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    status: JobStatus | None = None,
) -> list[dict[str, Any]]:
    """The newest jobs, optionally of one status."""
    with session_scope(state_of(request).db) as session:
        rows = list_jobs(session=session, limit=limit, status=status)
    return [job_json(row) for row in rows]


@router.get("/jobs/{job_id}")
def job(request: Request, job_id: int) -> dict[str, Any]:
    """One job with chunk states, errors grouped by reason and child jobs."""
    with session_scope(state_of(request).db) as session:
        return job_json(job_summary(session=session, job_id=job_id))


@router.post("/jobs/caption", status_code=201)
def submit_caption(request: Request, body: CaptionJobIn) -> dict[str, Any]:
    """Queue a caption job for a folder under VICAP_WEB_ROOTS (links leading outside are left out)."""
    state = state_of(request)
    plan = actions.submit_caption_job(
        db=state.db,
        request=actions.CaptionRequest(**body.model_dump()),
        roots=state.roots,
        chunk_size=state.settings.chunk_size,
    )
    return {
        "job_id": plan.job_id,
        "images": plan.n_images,
        "chunks": len(plan.chunk_ids),
        "skipped_dirs": plan.skipped_dirs,
        "skipped_outside_roots": plan.skipped_outside,
        "reused": plan.n_reused,
        "dataset_images": plan.n_linked,
    }


@router.post("/jobs/{job_id}/cancel")
def cancel(request: Request, job_id: int) -> dict[str, Any]:
    """Cancel a job and its child jobs."""
    revoked = actions.cancel(db=state_of(request).db, job_id=job_id)
    return {"job_id": job_id, "status": "cancelled", "revoked_tasks": revoked}


@router.post("/jobs/{job_id}/retry")
def retry(request: Request, job_id: int) -> dict[str, Any]:
    """Queue the failed or missing images of a finished caption job again."""
    chunks = actions.retry(db=state_of(request).db, job_id=job_id)
    return {"job_id": job_id, "status": "queued", "chunks": chunks}


@router.get("/jobs/{job_id}/captions")
def captions(
    request: Request, job_id: int, format: Annotated[str, Query(description=", ".join(FORMATS))] = "jsonl"
) -> Response:
    """The job's captions in one of the CLI's export formats (``captions export``)."""
    return export_response(request, job_id, format)


def export_response(request: Request, job_id: int, fmt: str) -> Response:
    """The export file as a download (shared with the job page's export links)."""
    text, _ = export_captions(db=state_of(request).db, job_id=job_id, fmt=fmt)
    return Response(
        text,
        media_type=MEDIA_TYPES[fmt],
        headers={"content-disposition": f'attachment; filename="job-{job_id}-captions.{SUFFIXES[fmt]}"'},
    )


@router.post("/caption")
async def caption_upload(
    request: Request,
    file: Annotated[UploadFile, File(description="One photo.")],
    model: Annotated[str | None, Form()] = None,
    engine: Annotated[str | None, Form()] = None,
) -> dict[str, Any]:
    """Caption one uploaded photo now (not a job): decoded safely, size- and pixel-capped."""
    state = state_of(request)
    data, suffix = await read_upload(file, state.captioner.limits.max_bytes)
    from starlette.concurrency import run_in_threadpool

    result = await run_in_threadpool(state.captioner.caption, data, model=model, engine=engine, suffix=suffix)
    return asdict(result)


@router.get("/models")
def models(request: Request) -> list[dict[str, Any]]:
    """Registered models."""
    return [
        {
            "id": m.id,
            "name": m.name,
            "family": m.family,
            "backbone": m.backbone,
            "exported": m.onnx_path is not None,
            "created_at": iso(m.created_at),
        }
        for m in list_models(db=state_of(request).db)
    ]


@router.get("/workers")
def workers(request: Request) -> list[dict[str, Any]]:
    """Worker rows with their device and last heartbeat."""
    return [
        {**asdict(w), "started_at": iso(w.started_at), "last_seen_at": iso(w.last_seen_at)}
        for w in list_workers(db=state_of(request).db)
    ]


@router.get("/scores")
def scores(request: Request, dataset: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
    """The latest score of every model × data set × split, with the blind baseline's."""
    rows = latest_scores(db=state_of(request).db, dataset=dataset, model=model)
    return [json.loads(json.dumps(asdict(row))) for row in rows]
