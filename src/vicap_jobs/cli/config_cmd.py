"""``vicap-jobs config``: the effective settings."""

from __future__ import annotations

import click

from vicap_jobs.cli.common import print_table
from vicap_jobs.settings import get_settings


@click.command()
def config() -> None:
    """Print the effective settings (from VICAP_* environment variables; passwords hidden).

    Example:

    \b
        VICAP_HOME=/data/vicap vicap-jobs config
    """
    print_table("vicap-jobs settings", ["variable", "value"], get_settings().public_view().items())
