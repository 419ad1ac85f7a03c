"""CLI errors are one line on stderr with a non-zero exit code; `db upgrade` / `db current` on both backends; `config` hides secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from vicap_jobs.cli.main import cli
from vicap_jobs.db import migrate

CONSOLE_SCRIPT = Path(sys.executable).with_name("vicap-jobs")
HEAD = migrate.head_revision("sqlite://")

BAD_SCHEME = "mysql://x"
NO_SCHEME = "vicap.sqlite"
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/x"

SetEnv = Callable[[str, str | None], None]


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="vicap-jobs")


def _assert_one_line_error(exit_code: int, stdout: str, stderr: str, *, expect: str = "") -> str:
    """A non-zero exit, nothing on stdout, and exactly one line on stderr: ``Error: ...``; returns it."""
    assert "Traceback" not in stdout + stderr, stdout + stderr
    assert exit_code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("Error: ")
    assert expect in lines[0]
    assert stdout == ""
    return lines[0]


def _assert_cli_error(result: Result, *, expect: str = "") -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"raised {result.exception!r} instead of a one-line error"
    )
    return _assert_one_line_error(result.exit_code, result.stdout, result.stderr, expect=expect)


def _run_console_script(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed ``vicap-jobs`` in a subprocess, with VICAP_HOME=home and only the given other VICAP_* settings."""
    assert CONSOLE_SCRIPT.is_file(), f"console script not installed next to {sys.executable}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VICAP_")}
    clean.update(VICAP_HOME=str(home), COLUMNS="200", **env)
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, env=clean, timeout=120, check=False
    )


# --------------------------------------------------------------------------- bad VICAP_DATABASE_URL


@pytest.mark.parametrize(
    ("url", "args", "expect"),
    [
        (BAD_SCHEME, ["db", "upgrade"], "invalid VICAP_DATABASE_URL"),
        (UNREACHABLE, ["db", "current"], "cannot reach the store"),
    ],
    ids=["mysql-upgrade", "unreachable-current"],
)
def test_bad_database_url_in_the_real_console_script(vicap_env: Path, url: str, args: list[str], expect: str) -> None:
    done = _run_console_script(args, vicap_env, VICAP_DATABASE_URL=url)
    _assert_one_line_error(done.returncode, done.stdout, done.stderr, expect=expect)


BAD_URL_CASES = [
    pytest.param(url, args, expect, id=f"{name}-{' '.join(args)}")
    for name, url, expect in [
        (
            "mysql",
            BAD_SCHEME,
            "VICAP_DATABASE_URL must start with one of sqlite://",
        ),
        ("no-scheme", NO_SCHEME, "invalid VICAP_DATABASE_URL"),
        ("unreachable", UNREACHABLE, "127.0.0.1:1"),
    ]
    for args in (["db", "upgrade"], ["db", "current"], ["db", "downgrade", "--yes"], ["config"])
    if not (url == UNREACHABLE and args == ["config"])  # config only prints the URL; it does not connect
]


@pytest.mark.parametrize(("url", "args", "expect"), BAD_URL_CASES)
def test_bad_database_url_is_a_one_line_error(vicap_setenv: SetEnv, url: str, args: list[str], expect: str) -> None:
    vicap_setenv("database_url", url)
    _assert_cli_error(_invoke(*args), expect=expect)


def test_bad_setting_is_a_one_line_error(vicap_setenv: SetEnv) -> None:
    vicap_setenv("chunk_size", "many")
    _assert_cli_error(_invoke("db", "current"), expect="invalid VICAP_CHUNK_SIZE")


def test_unusable_sqlite_location_is_a_one_line_error(vicap_setenv: SetEnv, vicap_env: Path) -> None:
    blocker = vicap_env / "not-a-folder"
    blocker.write_text("")
    vicap_setenv("home", str(blocker))
    _assert_cli_error(_invoke("db", "current"), expect=str(blocker))


@pytest.mark.parametrize(
    "args", [["db", "upgrade", "--revision", "no-such-revision"], ["db", "downgrade", "--yes"]], ids=" ".join
)
def test_bad_migration_target_is_a_one_line_error(vicap_env: Path, args: list[str]) -> None:
    _assert_cli_error(_invoke(*args))  # the second: an empty store has nothing to downgrade


# --------------------------------------------------------------------------- db upgrade / current


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, vicap_setenv: SetEnv, vicap_env: Path) -> str:
    """The store the CLI will use: the default SQLite file under VICAP_HOME, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{vicap_env / 'vicap.sqlite'}"
    url: str = request.getfixturevalue("postgres_url")
    vicap_setenv("database_url", url)
    return url


def _current(output: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("current:"))


def test_db_upgrade_then_current_report_head(store_url: str) -> None:
    before = _invoke("db", "current")
    assert before.exit_code == 0, before.output
    assert _current(before.stdout) == "base (empty)"
    assert f"head:    {HEAD}" in before.stdout

    upgraded = _invoke("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.stdout.strip().endswith(f"is at revision {HEAD}")

    after = _invoke("db", "current")
    assert after.exit_code == 0, after.output
    assert _current(after.stdout) == HEAD

    down = _invoke("db", "downgrade", "--revision", "base", "--yes")
    assert down.exit_code == 0, down.output
    assert down.stdout.strip().endswith("is at revision base")
    assert _current(_invoke("db", "current").stdout) == "base (empty)"


def test_db_downgrade_asks_for_confirmation(vicap_env: Path) -> None:
    assert _invoke("db", "upgrade").exit_code == 0
    refused = CliRunner().invoke(cli, ["db", "downgrade"], input="n\n", prog_name="vicap-jobs")
    assert refused.exit_code != 0
    assert _current(_invoke("db", "current").stdout) == HEAD


@pytest.mark.postgres
def test_db_upgrade_on_postgres_with_the_real_console_script(vicap_env: Path, postgres_url: str) -> None:
    upgraded = _run_console_script(["db", "upgrade"], vicap_env, VICAP_DATABASE_URL=postgres_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stderr == ""
    current = _run_console_script(["db", "current"], vicap_env, VICAP_DATABASE_URL=postgres_url)
    assert current.returncode == 0, current.stderr
    assert _current(current.stdout) == HEAD
    assert f"store:   {postgres_url}" in current.stdout


# --------------------------------------------------------------------------- config


def test_config_prints_no_password(vicap_setenv: SetEnv) -> None:
    vicap_setenv("database_url", "postgresql://u:s3cret@h/db")
    vicap_setenv("broker_url", "redis://:br0ker@h:6379/0")
    vicap_setenv("result_backend", "redis://u:r3sult@h/1")
    result = _invoke("config")
    assert result.exit_code == 0, result.output
    for secret in ("s3cret", "br0ker", "r3sult"):
        assert secret not in result.output
    assert "postgresql+psycopg://u:***@h/db" in result.stdout
    assert "redis://:***@h:6379/0" in result.stdout
    assert "redis://u:***@h/1" in result.stdout


def test_config_shows_the_effective_defaults(vicap_env: Path) -> None:
    done = _run_console_script(["config"], vicap_env)
    assert done.returncode == 0, done.stderr
    assert str(vicap_env) in done.stdout
    assert f"sqlite:///{vicap_env / 'vicap.sqlite'}" in done.stdout
    assert f"sqla+sqlite:///{vicap_env / 'broker.sqlite'}" in done.stdout


def test_a_rejected_url_is_not_echoed_with_its_password(vicap_setenv: SetEnv) -> None:
    vicap_setenv("database_url", "mysql://vicap:s3cret@db.example/vicap")  # an unsupported scheme
    line = _assert_cli_error(_invoke("config"), expect="invalid VICAP_DATABASE_URL")
    assert "s3cret" not in line


# --------------------------------------------------------------------------- a bug, not a user mistake


def test_an_unexpected_error_is_one_line_and_its_traceback_shows_with_vv(vicap_env: Path) -> None:
    """The CLI's last resort: a bug (here a planted ZeroDivisionError) is one line, the traceback only with -vv."""
    repo = Path(__file__).resolve().parents[2]
    path = os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)
    plugin = {"VICAP_PLUGINS": "tests.plugins.broken_command", "PYTHONPATH": path}

    quiet = _run_console_script(["jobs", "list"], vicap_env, **plugin)
    line = _assert_one_line_error(quiet.returncode, quiet.stdout, quiet.stderr, expect="unexpected ZeroDivisionError")
    assert "division by zero" in line and "rerun with -vv" in line
    assert quiet.returncode == 1

    loud = _run_console_script(["-vv", "jobs", "list"], vicap_env, **plugin)
    assert loud.returncode == 1
    assert "Traceback (most recent call last)" in loud.stderr and "ZeroDivisionError: division by zero" in loud.stderr
    assert "_broken_list_jobs" in loud.stderr  # the frame that raised
