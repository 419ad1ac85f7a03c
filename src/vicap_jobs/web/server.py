"""Running the web app with uvicorn, after the bind rule (``auth.check_bind``) says it may."""

from __future__ import annotations

import uvicorn

from vicap_jobs.settings import get_settings
from vicap_jobs.web.app import create_app
from vicap_jobs.web.auth import check_bind


def serve(*, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve the store of the current settings on ``host:port`` until interrupted."""
    settings = get_settings()
    check_bind(host, settings.web_token)
    app = create_app(settings=settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False)
