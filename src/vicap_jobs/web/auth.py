"""Who may use the web view: the token rule, the bind rule, and a same-origin rule for changes.

- Bound to 127.0.0.1 (the default) without ``VICAP_WEB_TOKEN``: open to this machine's users.
- Bound anywhere else: ``vicap-jobs web`` refuses to start without ``VICAP_WEB_TOKEN``
  (:func:`check_bind`).
- With a token, every request but ``/login`` and ``/static`` must carry it: API clients as
  ``Authorization: Bearer <token>``, browsers as the HttpOnly, SameSite=Strict cookie the
  login form sets. Tokens are compared in constant time.
- A form post or API call whose ``Origin`` (or ``Referer``) names another site is refused, so a
  page elsewhere cannot make a logged-in browser (or one on this machine) cancel jobs.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from vicap_jobs.errors import ConfigError

COOKIE = "vicap_token"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
OPEN_PATHS = ("/login", "/static/")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def check_bind(host: str, token: str | None) -> None:
    """ConfigError unless ``host`` is this machine's loopback or a token is set."""
    if host not in LOCAL_HOSTS and not token:
        raise ConfigError(
            f"binding the web view to {host} makes it reachable from other machines; "
            "set VICAP_WEB_TOKEN to a long random secret first (or bind to 127.0.0.1)"
        )


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def request_token(request: Request) -> str | None:
    """The token a request carries: the Bearer header, else the login cookie."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


def same_origin(request: Request) -> bool:
    """False when the request says it comes from a page on another host (Origin, else Referer)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return True  # curl and other clients that are not browsers send neither
    return source != "null" and urlsplit(source).netloc == request.headers.get("host", "")


def safe_next(target: str | None) -> str:
    """A redirect target after login: a path on this site only."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def install(app: FastAPI, *, token: str | None) -> None:
    """Add the token and same-origin checks to every request of ``app``."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        api = path.startswith("/api/")
        if request.method in UNSAFE_METHODS and not same_origin(request):
            return _refuse(api, 403, "cross-site request refused")
        if token and not path.startswith(OPEN_PATHS) and not token_matches(request_token(request), token):
            if api or request.method != "GET":
                return _refuse(True, 401, "this server needs its token: send 'Authorization: Bearer <VICAP_WEB_TOKEN>'")
            return RedirectResponse(f"/login?next={quote(path)}", status_code=303)
        return await call_next(request)


def _refuse(api: bool, status: int, message: str) -> Response:
    if api:
        return JSONResponse({"error": message}, status_code=status)
    return Response(message + "\n", status_code=status, media_type="text/plain; charset=utf-8")
