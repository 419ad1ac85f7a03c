"""The ``vicap-jobs`` command: a click group whose subcommands live one group per module.

Commands are thin: they parse options, call one library function and print.
Domain errors (``VicapError``) become a one-line message and exit code 1.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from vicap_jobs import __version__
from vicap_jobs.errors import VicapError
from vicap_jobs.plugins import load_plugins

#: command name -> "module:attribute"; modules are imported only when needed.
COMMANDS: dict[str, str] = {
    "config": "vicap_jobs.cli.config_cmd:config",
    "db": "vicap_jobs.cli.db_cmd:db",
    "dataset": "vicap_jobs.cli.dataset_cmd:dataset",
    "train": "vicap_jobs.cli.train_cmd:train",
    "evaluate": "vicap_jobs.cli.evaluate_cmd:evaluate",
    "models": "vicap_jobs.cli.models_cmd:models",
    "export": "vicap_jobs.cli.export_cmd:export",
    "submit": "vicap_jobs.cli.submit_cmd:submit",
    "jobs": "vicap_jobs.cli.jobs_cmd:jobs",
    "captions": "vicap_jobs.cli.captions_cmd:captions",
    "scores": "vicap_jobs.cli.scores_cmd:scores",
    "sweeps": "vicap_jobs.cli.sweeps_cmd:sweeps",
    "worker": "vicap_jobs.cli.worker_cmd:worker",
    "scheduler": "vicap_jobs.cli.scheduler_cmd:scheduler",
    "demo": "vicap_jobs.cli.demo_cmd:demo",
    "web": "vicap_jobs.cli.web_cmd:web",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when it is listed or run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return _not_yet_available(cmd_name)
            raise
        return getattr(module, attribute)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VicapError as exc:
            raise click.ClickException(str(exc)) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a bug, not a user mistake: one line, the traceback with -vv
            if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {first} (rerun with -vv for the traceback, and please report it)"
            ) from None


def _not_yet_available(name: str) -> click.Command:
    @click.command(name=name, help=f"Not yet available in this version.\n\nExample:\n\n    vicap-jobs {name} --help")
    def stub() -> None:
        raise click.ClickException(f"`vicap-jobs {name}` is not yet available")

    return stub


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vicap-jobs")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Train, export and run Vietnamese image-captioning models; caption folders in bulk; track scores in SQL.

    Jobs go through Celery (Redis in production, an embedded broker by default);
    everything lands in a SQL store (SQLite by default, PostgreSQL in production).

    Example:

    \b
        vicap-jobs demo
        vicap-jobs submit caption --dir photos/ --wait
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # VICAP_PLUGINS: families and job kinds from outside this package, loaded now so a broken one is one
    # line at once. Not for `worker`: a plugin may import torch, which must come after GPU pinning (the
    # worker loads them when it registers its tasks).
    if click.get_current_context().invoked_subcommand != "worker":
        load_plugins()


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="vicap-jobs")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
