"""``vicap-jobs web``: the web view and HTTP API over the store."""

from __future__ import annotations

import click

from vicap_jobs.cli.common import err_console
from vicap_jobs.settings import get_settings


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind; off this machine needs VICAP_WEB_TOKEN."
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
def web(host: str, port: int) -> None:
    """Serve the web view (dashboard, job galleries, models, compare, try it) and the JSON API.

    It reads the same store as every command. Submitting folders from it is off
    until VICAP_WEB_ROOTS names the folders it may caption; binding to anything
    but 127.0.0.1 needs VICAP_WEB_TOKEN, which every request must then carry.

    Example:

    \b
        vicap-jobs web
        VICAP_WEB_ROOTS=/data/photos vicap-jobs web --port 8080
        VICAP_WEB_TOKEN=$(openssl rand -hex 24) vicap-jobs web --host 0.0.0.0
    """
    from vicap_jobs.web.auth import check_bind  # imports FastAPI: only for this command
    from vicap_jobs.web.server import serve  # imports FastAPI, uvicorn and the engines: only for this command

    check_bind(host, get_settings().web_token)  # refuse before saying anything about serving
    err_console.print(
        f"vicap-jobs web view on http://{'[' + host + ']' if ':' in host else host}:{port}/ (Ctrl-C stops it)"
    )
    serve(host=host, port=port)
