"""Many rows in one statement (``vicap_jobs.db.bulk``) and commits that do not wait for the disk, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from vicap_jobs.db.bulk import insert_rows
from vicap_jobs.db.session import commit_without_waiting, session_scope
from vicap_jobs.db.tables import Image

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _images(db: Engine) -> list[tuple[object, ...]]:
    with session_scope(db) as session:
        rows = session.execute(
            select(Image.path, Image.file_name, Image.sha256, Image.width, Image.height, Image.created_at).order_by(
                Image.path
            )
        ).all()
    return [(path, name, sha, w, h, _utc(created)) for path, name, sha, w, h, created in rows]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _insert(db: Engine, rows: list[dict[str, object]]) -> list[Any]:
    with session_scope(db) as session:
        statement, parameters = insert_rows(session, Image, rows)
        statement = statement.on_conflict_do_nothing(
            index_elements=["path"], index_where=Image.dataset_id.is_(None)
        ).returning(Image.id, Image.path)
        return list(session.connection().execute(statement, parameters))


def _row(path: str, sha: str | None = None, width: int | None = None) -> dict[str, object]:
    return {"dataset_id": None, "path": path, "file_name": path[1:], "sha256": sha, "width": width, "created_at": WHEN}


def test_rows_with_varying_and_constant_columns_and_nulls_go_in_as_given(any_db: Engine) -> None:
    rows = [_row("/a", "aa", 3), _row("/b", None, None), _row("/c", "cc", 3)]
    returned = _insert(any_db, rows)
    assert sorted(path for _, path in returned) == ["/a", "/b", "/c"]
    assert _images(any_db) == [
        ("/a", "a", "aa", 3, None, WHEN),
        ("/b", "b", None, None, None, WHEN),
        ("/c", "c", "cc", 3, None, WHEN),
    ]


def test_identical_rows_are_one_row_and_a_single_row_goes_in(any_db: Engine) -> None:
    assert [path for _, path in _insert(any_db, [_row("/same"), _row("/same")])] == ["/same"]
    assert _insert(any_db, [_row("/same")]) == []
    assert [path for _, path in _insert(any_db, [_row("/one")])] == ["/one"]
    assert [row[0] for row in _images(any_db)] == ["/one", "/same"]


def test_conflicting_rows_are_skipped_and_not_returned(any_db: Engine) -> None:
    _insert(any_db, [_row("/a")])
    returned = _insert(any_db, [_row("/a", "new"), _row("/b")])
    assert [path for _, path in returned] == ["/b"]
    assert [row[:3] for row in _images(any_db)] == [("/a", "a", None), ("/b", "b", None)]


def test_no_rows_is_a_programming_error(any_db: Engine) -> None:
    with session_scope(any_db) as session, pytest.raises(ValueError, match="at least one row"):
        insert_rows(session, Image, [])


def test_a_commit_that_does_not_wait_applies_to_its_own_transaction_only(any_db: Engine) -> None:
    postgres = any_db.dialect.name == "postgresql"
    with session_scope(any_db) as session:
        commit_without_waiting(session)
        if postgres:
            assert session.scalar(text("SHOW synchronous_commit")) == "off"
        session.add(Image(dataset_id=None, path="/x", file_name="x"))
    with session_scope(any_db) as session:
        if postgres:
            assert session.scalar(text("SHOW synchronous_commit")) == "on"
        assert session.scalar(select(Image.path)) == "/x"  # committed all the same
