"""The web view and HTTP API: one FastAPI app, server-rendered pages (Jinja2) and JSON under ``/api``.

Why FastAPI + Jinja2 + uvicorn rather than Flask: the JSON API gets typed request bodies
validated by pydantic (the library our job parameters already use) and a machine-readable
schema at ``/api/openapi.json``; plain ``def`` endpoints run in a thread pool, each with its
own short store session, so a slow page never holds a lock another request waits on; and
``TestClient`` drives every endpoint in tests without a server. The interactive ``/docs``
page is off: it loads its script from a CDN, and this app works offline.

Everything reads the store through ``services`` (the same functions as the CLI);
changes go through ``web/actions.py``.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from vicap_jobs import __version__
from vicap_jobs.db.store import open_engine
from vicap_jobs.errors import ImageError, NotFoundError, UploadTooLargeError, VicapError
from vicap_jobs.services.uploads import UploadCaptioner, UploadLimits, too_large_message
from vicap_jobs.settings import Settings, get_settings
from vicap_jobs.web import auth

HERE = Path(__file__).parent
log = logging.getLogger(__name__)


@dataclass
class WebState:
    """What every request handler needs: the store, settings, templates, the upload captioner."""

    db: Engine
    settings: Settings
    templates: Jinja2Templates
    captioner: UploadCaptioner
    roots: list[Path] = field(default_factory=list)


def _templates() -> Jinja2Templates:
    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "svg"), default_for_string=True, default=True),
    )
    environment.filters["nfc"] = lambda value: "" if value is None else unicodedata.normalize("NFC", str(value))
    environment.filters["pct"] = lambda value: "–" if value is None else f"{100 * float(value):.1f}"
    environment.globals["version"] = __version__
    return Jinja2Templates(env=environment)


def create_app(*, settings: Settings | None = None, db: Engine | None = None) -> FastAPI:
    """The app over ``db`` (default: the store of ``settings``, upgraded to head like every command's)."""
    settings = settings or get_settings()
    db = db or open_engine(settings)
    limits = UploadLimits(
        max_bytes=int(settings.web_max_upload_mb * 1_000_000), max_pixels=settings.web_max_upload_pixels
    )
    app = FastAPI(
        title="vicap-jobs",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.web = WebState(
        db=db,
        settings=settings,
        templates=_templates(),
        captioner=UploadCaptioner(db=db, limits=limits, threads=settings.torch_threads),
        roots=settings.web_root_paths,
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    auth.install(app, token=settings.web_token)
    _install_upload_cap(app, limits.max_bytes)
    _install_error_pages(app)

    from vicap_jobs.web import api, pages  # the routers import this module's WebState

    app.include_router(api.router)
    app.include_router(pages.router)
    return app


def state_of(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


def status_for(exc: VicapError) -> int:
    """HTTP status of a domain error: unknown things 404, too large 413, unreadable images 422, other bad input 400."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, UploadTooLargeError):
        return 413
    if isinstance(exc, ImageError):
        return 422
    return 400


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page from ``templates/``, with the request and the current path in its context."""
    state = state_of(request)
    return state.templates.TemplateResponse(request, template, context, status_code=status_code)


UPLOAD_PATHS = ("/try", "/api/caption")
MULTIPART_OVERHEAD = 64 * 1024
"""Bytes a multipart body may carry beyond the photo (boundaries, headers, the model and engine fields)."""


def _install_upload_cap(app: FastAPI, max_bytes: int) -> None:
    """Refuse an upload whose declared size is over the cap before its body is read (and spooled to disk)."""

    @app.middleware("http")
    async def upload_cap(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.method == "POST" and request.url.path in UPLOAD_PATHS:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
                message = too_large_message(int(declared), max_bytes)
                if wants_json(request):
                    return JSONResponse({"error": message}, status_code=413)
                return render(request, "error.html", status_code=413, message=message, status=413)
        return await call_next(request)


def _install_error_pages(app: FastAPI) -> None:
    """Every error is one readable line: ``{"error": ...}`` under /api, the error page elsewhere; never a traceback."""

    def one_line(request: Request, status: int, message: str) -> Response:
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=status)
        return render(request, "error.html", status_code=status, message=message, status=status)

    @app.exception_handler(VicapError)
    async def domain_error(request: Request, exc: VicapError) -> Response:
        return one_line(request, status_for(exc), str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = "no such page" if exc.status_code == 404 else str(exc.detail)
        return one_line(request, exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        return one_line(request, 422, validation_message(exc))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return one_line(request, 500, f"unexpected {type(exc).__name__}: {first} (see the server log)")


def validation_message(exc: RequestValidationError) -> str:
    """The first problem of a rejected request as one line, e.g. "query status: Input should be 'queued', ..."."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = " ".join(str(part) for part in first.get("loc", ()) if part != "body")
    return f"{where}: {first.get('msg', 'invalid')}".strip(": ")
