"""Every command and subcommand of ``vicap-jobs`` has help with an ``Example:``; ``--version`` works.

The command tree is walked at collection time, so commands added later are
covered without touching this file.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from vicap_jobs import __version__
from vicap_jobs.cli.main import COMMANDS, cli

CONSOLE_SCRIPT = Path(sys.executable).with_name("vicap-jobs")


def _walk(command: click.Command, path: tuple[str, ...], ctx: click.Context) -> list[tuple[str, ...]]:
    """Every command path under ``command`` (itself included), depth first, in listing order.

    A subcommand that cannot even be loaded is still listed, so its own test fails
    with the error instead of the whole module failing to collect.
    """
    paths = [path]
    if not isinstance(command, click.Group):
        return paths
    for name in command.list_commands(ctx):
        try:
            sub = command.get_command(ctx, name)
        except Exception:  # noqa: BLE001 - reported by the test of this path
            sub = None
        if sub is None:
            paths.append((*path, name))
            continue
        paths.extend(_walk(sub, (*path, name), click.Context(sub, info_name=name, parent=ctx)))
    return paths


COMMAND_PATHS = _walk(cli, (), click.Context(cli, info_name="vicap-jobs"))


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="vicap-jobs")


def test_the_walk_reaches_every_registered_command_and_nested_ones() -> None:
    top_level = {path[0] for path in COMMAND_PATHS if path}
    assert top_level == set(COMMANDS)
    for nested in [("db", "upgrade"), ("db", "downgrade"), ("db", "current")]:
        assert nested in COMMAND_PATHS


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "vicap-jobs")
def test_help_exits_zero_and_shows_an_example(path: tuple[str, ...]) -> None:
    result = _invoke(*path, "--help")
    shown = " ".join(("vicap-jobs", *path))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"`{shown} --help` raised {result.exception!r}"
    )
    assert result.exit_code == 0, f"`{shown} --help` exited {result.exit_code}:\n{result.output}"
    assert f"Usage: {shown}" in result.output
    assert "Example:" in result.output, f"`{shown} --help` has no 'Example:' block:\n{result.output}"


def test_short_help_option() -> None:
    result = _invoke("-h")
    assert result.exit_code == 0
    assert "Usage: vicap-jobs" in result.output


def test_version() -> None:
    result = _invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"vicap-jobs, version {__version__}"
    assert __version__ == version("vicap-jobs"), "the package metadata and vicap_jobs.__version__ disagree"


def test_version_from_the_installed_console_script() -> None:
    assert CONSOLE_SCRIPT.is_file(), f"console script not installed next to {sys.executable}"
    done = subprocess.run([str(CONSOLE_SCRIPT), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"vicap-jobs, version {__version__}"
