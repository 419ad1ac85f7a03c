"""Fixtures shared by the whole suite: an isolated environment, stores on SQLite and PostgreSQL, UIT-ViIC.

Environment
    ``vicap_env`` -> Path
        VICAP_HOME points at a fresh temporary folder (returned), every other
        ``VICAP_*`` setting is unset, and the settings cache and the process's
        cached engines are reset before and after the test. Use it in every test
        that calls ``get_settings()``, opens the store from settings or runs the CLI.
    ``vicap_setenv`` -> callable(name, value | None)
        Sets (or with None unsets) one ``VICAP_<NAME>`` variable inside
        ``vicap_env`` and resets the caches, e.g. ``vicap_setenv("database_url", url)``.

Stores (SQLAlchemy engines made with ``vicap_jobs.db.session.make_engine``, so
SQLite has its WAL / foreign-key pragmas, exactly as in production)
    ``sqlite_db`` -> Engine
        A fresh SQLite file (under ``tmp_path``) whose schema is at head.
        ``sqlite_db.url.render_as_string(hide_password=False)`` is its URL.
    ``make_sqlite_db`` -> callable(folder: Path) -> Engine   (session scope)
        The same for wider scopes, e.g. a module-scoped store filled once:
        ``make_sqlite_db(tmp_path_factory.mktemp("store"))``.
        Both copy a template migrated once per session with the real
        migrations (``tests/db/test_migrations.py`` tests migrating itself).
    ``postgres_url`` -> str
        URL of a fresh, EMPTY (not migrated) database ``vicap_test_<hex>`` on the
        local PostgreSQL; dropped afterwards (its connections are terminated first).
        Tests that use it are marked ``postgres`` automatically.
    ``make_postgres_db`` -> callable() -> str   (session scope)
        The same for wider scopes; databases still alive at the end of the session are dropped.
    ``any_db`` -> Engine, parametrized ``[sqlite]`` / ``[postgres]``
        A store at head on either backend, empty at the start of each test. The
        postgres case (marked ``postgres``) reuses one migrated database per
        session and truncates every table after the test, so do not change the
        schema through ``any_db``: use ``postgres_url`` for that.

    PostgreSQL is ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``
    (override with VICAP_TEST_POSTGRES_ADMIN_URL). When it is unreachable the
    tests that need it are skipped, but when the environment variable ``CI`` is
    set they fail instead, so CI can never pass by silently skipping them. Run
    ``pytest -m "not postgres"`` to leave them out on purpose.

Data
    ``uitviic_dir`` -> Path   (session scope)
        ``shared/data/uitviic`` next to the repository root (the folder that
        holds ``uitviic_captions_{train,val,test}2017.json``); skipped when absent,
        failed under CI.

Helpers importable from tests (``from tests.conftest import ...``):
``skip_or_fail(reason)``, ``in_ci()``, ``POSTGRES_ADMIN_URL``, ``UITVIIC_DIR``,
``UITVIIC_FILES``.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from tests.seaweed import SeaweedS3
from vicap_jobs.db import migrate
from vicap_jobs.db.session import dispose_engines, make_engine
from vicap_jobs.settings import Settings, reset_settings

POSTGRES_ADMIN_URL = os.environ.get(
    "VICAP_TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
POSTGRES_TEST_DB_PREFIX = "vicap_test_"
UITVIIC_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/uitviic"
UITVIIC_FILES = {split: f"uitviic_captions_{split}2017.json" for split in ("train", "val", "test")}

#: Every environment variable the settings read (VICAP_HOME, VICAP_DATABASE_URL, ...).
SETTINGS_ENV_VARS = tuple(f"VICAP_{name.upper()}" for name in Settings.model_fields)


# --------------------------------------------------------------------------- helpers


def in_ci() -> bool:
    """True when the CI environment variable is set (to anything but an explicit no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """Skip the test because a resource is missing, or fail it under CI where nothing may skip silently."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing resource is an error here, not a skip)", pytrace=False)
    pytest.skip(reason)


def _postgres_database_url(name: str) -> str:
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_postgres_database(admin: Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))


def _truncate_postgres_store(admin: Engine, url: str) -> None:
    """Empty every table of a migrated test database (other connections to it are terminated first)."""
    from vicap_jobs.db import tables  # noqa: F401  (registers the tables)
    from vicap_jobs.db.base import Base

    name = make_url(url).database
    with admin.connect() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            names = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- environment


@pytest.fixture()
def vicap_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated VICAP_HOME (returned); every other VICAP_* setting unset; caches reset around the test."""
    home = tmp_path / "vicap-home"
    home.mkdir()
    for name in SETTINGS_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VICAP_HOME", str(home))
    reset_settings()
    dispose_engines()
    yield home
    dispose_engines()
    reset_settings()


@pytest.fixture()
def vicap_setenv(vicap_env: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str | None], None]:
    """``set(name, value)``: set VICAP_<NAME> (None unsets it) and forget cached settings and engines."""

    def set_variable(name: str, value: str | None) -> None:
        variable = name.upper() if name.upper().startswith("VICAP_") else f"VICAP_{name.upper()}"
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, value)
        reset_settings()
        dispose_engines()

    return set_variable


# --------------------------------------------------------------------------- SQLite


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session with the real migrations."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def make_sqlite_db(_sqlite_template: Path) -> Iterator[Callable[[Path], Engine]]:
    """``make(folder) -> Engine``: a fresh SQLite store at head in ``folder`` (vicap.sqlite)."""
    engines: list[Engine] = []

    def make(folder: Path) -> Engine:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "vicap.sqlite"
        if target.exists():
            raise FileExistsError(f"{target} already exists; give each store its own folder")
        source = sqlite3.connect(_sqlite_template)
        destination = sqlite3.connect(target)
        try:
            source.backup(destination)  # consistent even in WAL mode
        finally:
            destination.close()
            source.close()
        engine = make_engine(f"sqlite:///{target}")
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture()
def sqlite_db(make_sqlite_db: Callable[[Path], Engine], tmp_path: Path) -> Engine:
    """An engine on a fresh SQLite file whose schema is at head."""
    return make_sqlite_db(tmp_path / "sqlite-store")


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def _postgres_admin() -> Iterator[Engine]:
    """An AUTOCOMMIT engine on the server's maintenance database; skip (fail under CI) when unreachable."""
    admin = create_engine(
        POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}, pool_pre_ping=True
    )
    problem = None
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        problem = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if problem is not None:
        admin.dispose()
        shown = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
        skip_or_fail(f"PostgreSQL is unreachable at {shown}: {problem}")
    yield admin
    admin.dispose()


@pytest.fixture(scope="session")
def make_postgres_db(_postgres_admin: Engine) -> Iterator[Callable[[], str]]:
    """``make() -> url``: create a fresh empty database ``vicap_test_<hex>``; leftovers are dropped at session end."""
    created: list[str] = []

    def make() -> str:
        name = f"{POSTGRES_TEST_DB_PREFIX}{uuid.uuid4().hex[:12]}"
        with _postgres_admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return _postgres_database_url(name)

    yield make
    dispose_engines()
    for name in created:
        _drop_postgres_database(_postgres_admin, name)


@pytest.fixture()
def postgres_url(make_postgres_db: Callable[[], str], _postgres_admin: Engine) -> Iterator[str]:
    """URL of a fresh, empty database on the local PostgreSQL, dropped after the test."""
    url = make_postgres_db()
    yield url
    dispose_engines()  # the app's cached engine on this database, if the test made one
    _drop_postgres_database(_postgres_admin, make_url(url).database or "")


@pytest.fixture(scope="session")
def _postgres_store_url(make_postgres_db: Callable[[], str]) -> str:
    """One database migrated to head, shared by every ``any_db[postgres]`` test (emptied after each)."""
    url = make_postgres_db()
    migrate.upgrade(url)
    return url


# --------------------------------------------------------------------------- either backend


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty store at head on SQLite, then on PostgreSQL; ``any_db.dialect.name`` says which."""
    if request.param == "sqlite":
        yield request.getfixturevalue("make_sqlite_db")(tmp_path / "sqlite-store")
        return
    url = request.getfixturevalue("_postgres_store_url")
    admin = request.getfixturevalue("_postgres_admin")
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        _truncate_postgres_store(admin, url)


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def uitviic_dir() -> Path:
    """The UIT-ViIC captions folder (shared/ next to the repository root); skipped when absent, failed under CI."""
    missing = [name for name in UITVIIC_FILES.values() if not (UITVIIC_DIR / name).is_file()]
    if missing:
        skip_or_fail(
            f"UIT-ViIC captions not found: {', '.join(missing)} under {UITVIIC_DIR} (shared/ must sit beside the repository)"
        )
    return UITVIIC_DIR


# --------------------------------------------------------------------------- markers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a PostgreSQL fixture ``postgres`` so ``-m "not postgres"`` leaves it out."""
    postgres_fixtures = {"postgres_url", "make_postgres_db", "_postgres_admin", "_postgres_store_url"}
    for item in items:
        if postgres_fixtures & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.postgres)


__all__ = [
    "POSTGRES_ADMIN_URL",
    "UITVIIC_DIR",
    "UITVIIC_FILES",
    "in_ci",
    "skip_or_fail",
]


# ----------------------------------------------------------------------------------------------------------------
# Object storage: a real SeaweedFS S3 server (tests/seaweed.py)
#
#   ``seaweed`` -> SeaweedS3   (session scope)
#       One server for the session; skipped when it cannot start (failed under CI). Do not stop it:
#       tests that take the storage away start their own with ``make_seaweed``.
#   ``make_seaweed`` -> callable(folder) -> SeaweedS3 (started; stopped at the end of the test)
#   ``s3_bucket`` -> str
#       A fresh bucket on ``seaweed`` as ``s3://NAME``, with the client's AWS_* variables set
#       (``monkeypatch``) the way a user sets them: vicap-jobs reads no credentials of its own.
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = _start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


def _start_seaweed(folder: Path) -> SeaweedS3:
    try:
        server = SeaweedS3(folder)
        server.start()
    except RuntimeError as exc:
        skip_or_fail(f"SeaweedFS (object storage tests) cannot start: {exc}")
        raise
    return server


@pytest.fixture()
def make_seaweed(tmp_path: Path) -> Iterator[Callable[[Path], SeaweedS3]]:
    started: list[SeaweedS3] = []

    def make(folder: Path) -> SeaweedS3:
        server = _start_seaweed(folder)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def use_s3_env(monkeypatch: pytest.MonkeyPatch, server: SeaweedS3) -> None:
    """Point S3 clients of this process at ``server`` through the standard AWS variables.

    fsspec keeps one client per set of constructor arguments for the process's life (the variables
    are read when it is made), so the cached clients are dropped: the next one reads the new variables.
    """
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore's own retries; vicap-jobs retries on top


@pytest.fixture()
def s3_bucket(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> str:
    use_s3_env(monkeypatch, seaweed)
    return f"s3://{seaweed.new_bucket()}"


@pytest.fixture()
def own_s3(
    make_seaweed: Callable[[Path], SeaweedS3],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    vicap_setenv: Callable[[str, str | None], None],
) -> SeaweedS3:
    """A SeaweedFS server of this test's own (it may stop and restart it), the clients pointed at it and failing fast.

    botocore tries each call once (``AWS_MAX_ATTEMPTS=1``) and vicap-jobs twice (``VICAP_STORAGE_RETRIES=2``), so a
    stopped server is "unreachable" after half a second, not after a minute.
    """
    server = make_seaweed(tmp_path / "own-seaweed")
    use_s3_env(monkeypatch, server)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    vicap_setenv("storage_retries", "2")
    return server
