"""Registering a folder's images for a caption job (``register_folder_images``) on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine, func, insert, select

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Dataset, Image
from vicap_jobs.services import captioning
from vicap_jobs.services.captioning import register_folder_images


def _pictures(folder: Path, n: int, *, start: int = 0) -> list[Path]:
    """``n`` PNGs, picture ``i`` being ``10 + i`` pixels wide and 5 high."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"p{i:03d}.png"
        PILImage.new("RGB", (10 + i, 5), (i % 256, 0, 0)).save(path)
        paths.append(path)
    return paths


def _rows(db: Engine) -> dict[str, tuple[int, str | None, int | None, int | None, str]]:
    """path → (id, sha256, width, height, file_name) of every ad-hoc image row."""
    with session_scope(db) as session:
        rows = session.execute(
            select(Image.path, Image.id, Image.sha256, Image.width, Image.height, Image.file_name).where(
                Image.dataset_id.is_(None)
            )
        ).all()
    return {path: (image_id, sha, w, h, name) for path, image_id, sha, w, h, name in rows}


def test_new_files_get_rows_with_hash_and_size_in_the_order_given(any_db: Engine, tmp_path: Path) -> None:
    paths = _pictures(tmp_path, 3)
    ids = register_folder_images(db=any_db, paths=[paths[2], paths[0], paths[1]])
    rows = _rows(any_db)
    assert ids == [rows[str(paths[2])][0], rows[str(paths[0])][0], rows[str(paths[1])][0]]
    assert len(set(ids)) == 3
    for i, path in enumerate(paths):
        assert rows[str(path)][1:] == (hashlib.sha256(path.read_bytes()).hexdigest(), 10 + i, 5, path.name)


def test_a_second_registration_keeps_the_ids_and_adds_only_new_files(any_db: Engine, tmp_path: Path) -> None:
    first = _pictures(tmp_path, 2)
    before = register_folder_images(db=any_db, paths=first)
    more = _pictures(tmp_path, 2, start=2)
    after = register_folder_images(db=any_db, paths=[*first, *more])
    assert after[:2] == before
    assert len(set(after)) == 4 and len(_rows(any_db)) == 4


def test_a_changed_file_gets_its_new_hash_and_size_and_keeps_its_id(any_db: Engine, tmp_path: Path) -> None:
    changed, same = _pictures(tmp_path, 2)
    ids = register_folder_images(db=any_db, paths=[changed, same])
    same_before = _rows(any_db)[str(same)]
    PILImage.new("RGB", (33, 44), (1, 2, 3)).save(changed)
    assert register_folder_images(db=any_db, paths=[changed, same]) == ids
    rows = _rows(any_db)
    assert rows[str(changed)] == (ids[0], hashlib.sha256(changed.read_bytes()).hexdigest(), 33, 44, changed.name)
    assert rows[str(same)] == same_before


def test_unreadable_files_are_registered_without_hash_or_size(any_db: Engine, tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    empty, missing = tmp_path / "empty.jpg", tmp_path / "gone.jpg"
    empty.write_bytes(b"")
    ids = register_folder_images(db=any_db, paths=[empty, missing])
    rows = _rows(any_db)
    assert rows[str(empty)] == (ids[0], hashlib.sha256(b"").hexdigest(), None, None, "empty.jpg")
    assert rows[str(missing)] == (ids[1], None, None, None, "gone.jpg")


def test_a_path_given_twice_is_one_row(any_db: Engine, tmp_path: Path) -> None:
    (path,) = _pictures(tmp_path, 1)
    ids = register_folder_images(db=any_db, paths=[path, path])
    assert ids[0] == ids[1] and len(_rows(any_db)) == 1


def test_many_files_span_several_pages(any_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captioning, "PAGE", 3)
    paths = _pictures(tmp_path, 8)
    register_folder_images(db=any_db, paths=paths[:4])
    ids = register_folder_images(db=any_db, paths=paths)
    rows = _rows(any_db)
    assert ids == [rows[str(p)][0] for p in paths]
    assert len(rows) == 8


def test_a_path_registered_by_another_submit_meanwhile_gets_that_row(
    any_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _pictures(tmp_path, 2)
    real_upsert = captioning._upsert_images
    theirs: list[int] = []
    raced: list[bool] = []

    def another_submit_first(session, rows):  # type: ignore[no-untyped-def]
        if not raced:  # once, before our own upsert: the other submit's transaction commits first
            raced.append(True)
            theirs.extend(register_folder_images(db=any_db, paths=paths[:1]))
        return real_upsert(session, rows)

    monkeypatch.setattr(captioning, "_upsert_images", another_submit_first)
    ids = register_folder_images(db=any_db, paths=paths)
    monkeypatch.undo()
    assert ids[0] == theirs[0] and ids[1] != theirs[0]
    assert len(_rows(any_db)) == 2


def test_a_dataset_image_with_the_same_path_is_not_reused(any_db: Engine, tmp_path: Path) -> None:
    (path,) = _pictures(tmp_path, 1)
    with session_scope(any_db) as session:
        dataset = Dataset(name="d", format="synth")
        session.add(dataset)
        session.flush()
        session.execute(insert(Image).values(dataset_id=dataset.id, path=str(path), file_name=path.name))
    (image_id,) = register_folder_images(db=any_db, paths=[path])
    with session_scope(any_db) as session:
        assert session.scalar(select(Image.dataset_id).where(Image.id == image_id)) is None
        assert session.scalar(select(func.count()).select_from(Image)) == 2
