"""Many rows in one INSERT: on PostgreSQL one array per column (``unnest``), elsewhere multi-row VALUES.

Both forms keep ``ON CONFLICT`` and ``RETURNING``, so the callers stay idempotent and learn what
they inserted. On PostgreSQL a multi-row VALUES statement of a few thousand placeholders spends
most of its time in the client (psycopg splits and converts the query text in Python on every
execution: 6 s of 23 s registering 100,000 images); with one array per column the statement text
is short and fixed and the rows travel as a handful of parameters. SQLite runs in-process, so
there SQLAlchemy's multi-row VALUES pages (within its bound-parameter limit) are used as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from vicap_jobs.db.base import Base

Insert = postgresql.Insert | sqlite.Insert


def insert_rows(
    session: Session, entity: type[Base], rows: Sequence[Mapping[str, Any]]
) -> tuple[Insert, list[dict[str, Any]] | None]:
    """(INSERT statement, executemany parameters or None) that insert ``rows`` into ``entity``'s table.

    Every row has the same keys, column names of that table. Add ``on_conflict_*`` and ``returning``
    to the statement, then run ``session.connection().execute(statement, parameters)``.
    """
    if not rows:
        raise ValueError("insert_rows needs at least one row")
    names = list(rows[0])
    if session.get_bind().dialect.name != "postgresql":
        return sqlite.insert(entity), [dict(row) for row in rows]
    columns: list[ColumnElement[Any]] = []
    arrays: list[tuple[str, BindParameter[Any]]] = []
    for name in names:
        values = [row[name] for row in rows]
        column_type = entity.__table__.c[name].type
        if all(value == values[0] for value in values):  # the job, the model, the engine, the time
            columns.append(bindparam(f"rows_{name}", values[0], type_=column_type).label(name))
        else:
            arrays.append((name, bindparam(f"rows_{name}", values, type_=postgresql.ARRAY(column_type))))
    if arrays:
        source = func.unnest(*(array for _, array in arrays)).table_valued(*(n for n, _ in arrays)).render_derived()
        columns += [source.c[name] for name, _ in arrays]
    by_name = {column.name: column for column in columns}
    selected = select(*(by_name[name] for name in names))
    if not arrays:  # every row the same: one row
        selected = selected.limit(1)
    return postgresql.insert(entity).from_select(names, selected), None
