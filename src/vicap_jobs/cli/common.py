"""Helpers every command shares: settings, the store, tables on the terminal."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from vicap_jobs.db.store import open_engine
from vicap_jobs.settings import Settings, get_settings

# Piped output (files, CI logs, tests) is not squeezed into 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False)


def open_store() -> tuple[Settings, Engine]:
    """Validated settings and an engine whose schema is at head (empty SQLite is upgraded)."""

    settings = get_settings()
    return settings, open_engine(settings)


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain table; numbers right-aligned."""
    table = Table(title=title, show_lines=False, title_justify="left")
    materialized = [list(r) for r in rows]
    for i, name in enumerate(columns):
        numeric = bool(materialized) and all(_numeric(r[i]) for r in materialized)
        table.add_column(name, justify="right" if numeric else "left")
    for row in materialized:
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)


NUMBER_TEXT = re.compile(r"[-+]?[\d,]*\.?\d+( ± [\d.]+)?%?|–|-")
"""Text that is a number to the reader ("0.54", "81.9 ± 1.5", "12%", a dash for none): right-aligned too."""


def _numeric(value: object) -> bool:
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return True
    return isinstance(value, str) and NUMBER_TEXT.fullmatch(value.strip()) is not None


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
