"""Alembic, driven from code: upgrade, downgrade, current, and the start-up schema check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from vicap_jobs.errors import ConfigError, StoreError

ALEMBIC_DIR = Path(__file__).resolve().parents[3] / "alembic"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the project's migrations and ``url``."""
    if not (ALEMBIC_DIR / "env.py").exists():
        raise ConfigError(
            f"migrations not found at {ALEMBIC_DIR}; install vicap-jobs from its source tree (pip install -e .)"
        )
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision(url: str) -> str:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    """The revision stamped in the database, or None for an empty one."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        raise StoreError(
            f"cannot reach the store at {engine.url.render_as_string(hide_password=True)}: {_first_line(exc)}"
        ) from None


def upgrade(url: str, revision: str = "head") -> None:
    _run(lambda: command.upgrade(alembic_config(url), revision), url)


def downgrade(url: str, revision: str = "-1") -> None:
    _run(lambda: command.downgrade(alembic_config(url), revision), url)


def ensure_schema(engine: Engine, url: str) -> None:
    """Make sure the schema is at head before a command touches the store.

    An empty SQLite database is upgraded automatically (the embedded default
    just works); PostgreSQL, or SQLite holding other tables, is never migrated
    behind the operator's back: they are told to run ``vicap-jobs db upgrade``.
    """
    current = current_revision(engine)
    head = head_revision(url)
    if current == head:
        return
    is_sqlite = engine.dialect.name == "sqlite"
    if current is None and is_sqlite and not inspect(engine).get_table_names():
        upgrade(url)
        return
    raise StoreError(
        f"the store schema is at {current or 'nothing'} but this vicap-jobs needs {head}; run `vicap-jobs db upgrade`"
    )


def _run(action: Callable[[], object], url: str) -> None:
    try:
        action()
    except CommandError as exc:  # unknown revision, nothing to downgrade, ...
        raise StoreError(f"migration failed: {exc}") from None
    except SQLAlchemyError as exc:
        raise StoreError(f"migration failed on {url.split('@')[-1]}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
