"""Opening the store for a command or a worker: engine + schema check."""

from __future__ import annotations

from sqlalchemy import Engine

from vicap_jobs.db.migrate import ensure_schema
from vicap_jobs.db.session import get_engine
from vicap_jobs.settings import Settings


def open_engine(settings: Settings) -> Engine:
    """The process's engine for the configured store, schema at head."""
    url = settings.effective_database_url
    engine = get_engine(url)
    ensure_schema(engine, url)
    return engine
