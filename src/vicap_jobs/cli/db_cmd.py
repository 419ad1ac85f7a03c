"""``vicap-jobs db``: schema migrations of the SQL store."""

from __future__ import annotations

import click

from vicap_jobs.db import migrate
from vicap_jobs.db.session import get_engine
from vicap_jobs.settings import get_settings, mask_password


@click.group()
def db() -> None:
    """Create, upgrade or inspect the SQL store's schema (Alembic migrations).

    Example:

    \b
        VICAP_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test vicap-jobs db upgrade
    """


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade(revision: str) -> None:
    """Upgrade the store's schema (creates it in an empty database).

    Example:

    \b
        vicap-jobs db upgrade
    """
    url = get_settings().effective_database_url
    migrate.upgrade(url, revision)
    click.echo(f"store at {mask_password(url)} is at revision {migrate.current_revision(get_engine(url))}")


@db.command()
@click.option("--revision", default="-1", show_default=True, help="Target revision ('base' drops everything).")
@click.confirmation_option(prompt="Downgrading can drop tables and their rows. Continue?")
def downgrade(revision: str) -> None:
    """Downgrade the store's schema by one revision, or to --revision.

    Example:

    \b
        vicap-jobs db downgrade --revision base --yes
    """
    url = get_settings().effective_database_url
    migrate.downgrade(url, revision)
    click.echo(f"store at {mask_password(url)} is at revision {migrate.current_revision(get_engine(url)) or 'base'}")


@db.command()
def current() -> None:
    """Show the schema revision of the store and the one this version needs.

    Example:

    \b
        vicap-jobs db current
    """
    url = get_settings().effective_database_url
    now = migrate.current_revision(get_engine(url)) or "base (empty)"
    click.echo(f"store:   {mask_password(url)}\ncurrent: {now}\nhead:    {migrate.head_revision(url)}")
