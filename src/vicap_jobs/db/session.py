"""Engine and session factory: one engine per process (created after a worker forks).

SQLite runs in WAL mode with a busy timeout so several worker processes can
write concurrently; PostgreSQL is used as is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from vicap_jobs.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 30_000

_engines: dict[tuple[int, str], Engine] = {}


def _enable_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """A new engine for ``url``; SQLite parent folders are created."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"invalid database URL {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the SQLite store folder {folder}: {exc.strerror or exc}") from None
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _enable_sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def get_engine(url: str) -> Engine:
    """The process's engine for ``url``; a forked child makes its own."""
    key = (os.getpid(), url)
    if key not in _engines:
        _engines[key] = make_engine(url)
    return _engines[key]


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests, worker shutdown)."""
    for (pid, _), engine in list(_engines.items()):
        if pid == os.getpid():
            engine.dispose()
    _engines.clear()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success, rolls back on error, and always closes."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def rows_changed(session: Session, statement: Executable) -> int:
    """Execute an UPDATE/DELETE and return how many rows it changed (a transition that found its row)."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def commit_without_waiting(session: Session) -> None:
    """Let this transaction's commit return before its WAL is on disk (PostgreSQL; SQLite already does).

    Only for writes that a later ordinary commit makes durable: PostgreSQL writes WAL in order, so
    the next synchronous commit (a chunk's close) flushes this one too, and a crash in between
    loses it together with everything that depended on it (the chunk is still running, so it is
    redone). Saves the disk flush of every commit: ~3.7 ms here, a quarter of a 256-row caption
    write (bench/scale.py). SQLite runs with ``synchronous=NORMAL`` in WAL mode, the same trade.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
