"""The pages: dashboard, job gallery, models, compare, try it, login; and the fragments the pages poll.

Each handler is a few lines: read through ``services`` (or change through ``web/actions``),
render a template. Pages that follow running work poll a server-rendered fragment every two
seconds (``static/live.js``), so escaping happens in one place, the templates.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from vicap_jobs.db.session import session_scope
from vicap_jobs.errors import InputError, NotFoundError, VicapError
from vicap_jobs.jobs.queries import job_summary, list_jobs
from vicap_jobs.models.registry import get_family
from vicap_jobs.services.comparison import SORTS, compare_jobs, compare_models
from vicap_jobs.services.gallery import THUMBNAIL_SIZES, job_gallery, model_samples, thumbnail_file
from vicap_jobs.services.models import list_models, resolve_model
from vicap_jobs.services.scores import ScorePoint, latest_scores, score_history
from vicap_jobs.services.sweep_reports import sweep_report
from vicap_jobs.services.sweeps import METRICS, sweep_names
from vicap_jobs.services.workers import list_workers
from vicap_jobs.web import actions, auth
from vicap_jobs.web.api import FORMATS, export_response
from vicap_jobs.web.app import render, state_of, status_for
from vicap_jobs.web.charts import Series, line_chart
from vicap_jobs.web.uploads import read_upload
from vicap_jobs.web.views import duration, job_json

router = APIRouter(include_in_schema=False)
DASHBOARD_JOBS = 30
METRIC_NAMES = {
    "bleu_1": "BLEU-1",
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "bleu_4": "BLEU-4",
    "rouge_l": "ROUGE-L",
    "cider_d": "CIDEr-D",
}


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request) -> HTMLResponse:
    state = state_of(request)
    return render(
        request,
        "dashboard.html",
        jobs=_recent_jobs(request),
        workers=list_workers(db=state.db),
        scores=latest_scores(db=state.db),
        duration=duration,
    )


@router.get("/fragments/jobs", response_class=HTMLResponse)
def jobs_fragment(request: Request) -> HTMLResponse:
    """The dashboard's job rows, polled while the page is open."""
    return render(request, "_jobs_rows.html", jobs=_recent_jobs(request), duration=duration)


def _recent_jobs(request: Request) -> list[dict[str, object]]:
    with session_scope(state_of(request).db) as session:
        return [job_json(s) for s in list_jobs(session=session, limit=DASHBOARD_JOBS)]


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: int, status: str = "all", page: Annotated[int, Query(ge=1)] = 1) -> HTMLResponse:
    state = state_of(request)
    with session_scope(state.db) as session:
        job = job_json(job_summary(session=session, job_id=job_id))
    gallery = (
        job_gallery(db=state.db, job_id=job_id, status=status, page=page)
        if job["kind"] in ("caption", "evaluate")
        else None
    )
    return render(request, "job.html", job=job, gallery=gallery, formats=FORMATS, duration=duration)


@router.get("/fragments/jobs/{job_id}/progress", response_class=HTMLResponse)
def job_progress_fragment(request: Request, job_id: int) -> HTMLResponse:
    with session_scope(state_of(request).db) as session:
        job = job_json(job_summary(session=session, job_id=job_id))
    return render(request, "_job_progress.html", job=job, duration=duration)


@router.post("/jobs/{job_id}/cancel")
def cancel_form(request: Request, job_id: int) -> RedirectResponse:
    actions.cancel(db=state_of(request).db, job_id=job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/retry")
def retry_form(request: Request, job_id: int) -> RedirectResponse:
    actions.retry(db=state_of(request).db, job_id=job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.get("/jobs/{job_id}/export/{fmt}")
def export_download(request: Request, job_id: int, fmt: str) -> Response:
    return export_response(request, job_id, fmt)


@router.get("/thumbnails/{image_id}.jpg")
def thumbnail(request: Request, image_id: int, size: int = THUMBNAIL_SIZES[0]) -> Response:
    """A stored image's thumbnail; the placeholder (still 404) when its file can no longer be read."""
    try:
        state = state_of(request)
        path = thumbnail_file(db=state.db, image_id=image_id, size=size, cache_dir=state.settings.cache_dir)
    except VicapError as exc:
        placeholder = Path(__file__).parent / "static" / "missing.svg"
        return FileResponse(placeholder, status_code=status_for(exc), media_type="image/svg+xml")
    return FileResponse(path, media_type="image/jpeg", headers={"cache-control": "private, max-age=86400"})


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request) -> HTMLResponse:
    state = state_of(request)
    return render(request, "models.html", models=list_models(db=state.db), scores=latest_scores(db=state.db))


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(request: Request, name: str) -> HTMLResponse:
    state = state_of(request)
    model = resolve_model(db=state.db, name=name)
    history = score_history(db=state.db, model_id=model.id)
    trained_by = None
    if model.trained_by_job_id is not None:
        with session_scope(state.db) as session, contextlib.suppress(NotFoundError):
            trained_by = job_json(job_summary(session=session, job_id=model.trained_by_job_id))
    return render(
        request,
        "model.html",
        model=model,
        family=get_family(model.family),
        scores=latest_scores(db=state.db, model=model.name),
        chart=_history_chart(history),
        history=history,
        samples=model_samples(db=state.db, model_id=model.id),
        trained_by=trained_by,
    )


def _history_chart(history: list[ScorePoint]) -> Markup:
    series: list[Series] = []
    keys = sorted({(p.dataset, p.split, p.tokenization) for p in history})
    for dataset, split, tokenization in keys:
        points = [p for p in history if (p.dataset, p.split, p.tokenization) == (dataset, split, tokenization)]
        label = f"{dataset}/{split}" + ("" if tokenization == "syllable" else f" ({tokenization})")
        series.append(Series(f"BLEU-4 {label}", [(p.created_at, p.bleu_4) for p in points]))
        series.append(Series(f"ROUGE-L {label}", [(p.created_at, p.rouge_l) for p in points], dashed=True))
    return line_chart(series, title="BLEU-4 and ROUGE-L over time")


@router.get("/sweeps", response_class=HTMLResponse)
def sweeps_page(request: Request) -> HTMLResponse:
    """Every sweep with its progress; each links to its table."""
    state = state_of(request)
    reports = [sweep_report(db=state.db, name=name) for name in sweep_names(db=state.db)]
    return render(request, "sweeps.html", reports=reports)


@router.get("/sweeps/{name}", response_class=HTMLResponse)
def sweep_page(request: Request, name: str) -> HTMLResponse:
    """The table of ``vicap-jobs sweeps show``: mean ± std per grid point beside the blind baseline, then every run."""
    report = sweep_report(db=state_of(request).db, name=name)
    return render(request, "sweep.html", report=report, metrics=METRICS, names=METRIC_NAMES)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    a: str | None = None,
    b: str | None = None,
    by: str = "models",
    sort: str = "disagreement",
) -> HTMLResponse:
    state = state_of(request)
    comparison = None
    if a and b:
        if by == "jobs":
            comparison = compare_jobs(db=state.db, job_a=_job_number(a), job_b=_job_number(b), sort=sort)
        else:
            comparison = compare_models(db=state.db, model_a=a, model_b=b, sort=sort)
    return render(
        request,
        "compare.html",
        comparison=comparison,
        models=list_models(db=state.db),
        a=a,
        b=b,
        by=by,
        sort=sort,
        sorts=SORTS,
    )


def _job_number(text: str) -> int:
    try:
        return int(text.strip().removeprefix("#"))
    except ValueError:
        raise InputError(f"a job is compared by its id (a number); got {text!r}") from None


@router.get("/try", response_class=HTMLResponse)
def try_page(request: Request) -> HTMLResponse:
    return _try_render(request)


@router.post("/try", response_class=HTMLResponse)
async def try_submit(
    request: Request,
    photo: Annotated[UploadFile | None, File()] = None,
    model: Annotated[str, Form()] = "",
    engine: Annotated[str, Form()] = "",
) -> HTMLResponse:
    state = state_of(request)
    try:
        if photo is None:
            raise InputError("choose a photo to upload")
        data, suffix = await read_upload(photo, state.captioner.limits.max_bytes)
        result = await run_in_threadpool(
            state.captioner.caption, data, model=model or None, engine=engine or None, suffix=suffix
        )
    except VicapError as exc:
        return _try_render(request, error=str(exc), model=model, engine=engine, status_code=status_for(exc))
    return _try_render(request, result=result, model=model, engine=engine)


def _try_render(request: Request, status_code: int = 200, **context: object) -> HTMLResponse:
    state = state_of(request)
    models = list_models(db=state.db)
    engines = sorted({name for m in models for name in get_family(m.family).engines})
    return render(request, "try.html", status_code=status_code, models=models, engines=engines, **context)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "login.html", next=auth.safe_next(next))


@router.post("/login")
def login(request: Request, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/") -> Response:
    expected = state_of(request).settings.web_token
    if expected and not auth.token_matches(token, expected):
        return render(request, "login.html", status_code=401, next=auth.safe_next(next), error="wrong token")
    response = RedirectResponse(auth.safe_next(next), status_code=303)
    if expected:
        response.set_cookie(auth.COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response
