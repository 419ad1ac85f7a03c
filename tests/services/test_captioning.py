"""Registering a folder's images for a caption job (``register_folder_images``) on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine, func, select, update

from tests.store_helpers import add_model
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


def _dataset_image(db: Engine, path: Path, *, file_name: str | None = None, content: bytes | None = None) -> int:
    """A data set image row for ``path`` (as an import records it: resolved path, sha256 of ``content`` or the file)."""
    data = content if content is not None else path.read_bytes()
    with session_scope(db) as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == "d"))
        if dataset is None:
            dataset = Dataset(name="d", format="coco")
            session.add(dataset)
            session.flush()
        image = Image(
            dataset_id=dataset.id,
            path=str(path.resolve()),
            file_name=file_name or path.name,
            coco_id=9001,
            sha256=hashlib.sha256(data).hexdigest(),
        )
        session.add(image)
        session.flush()
        return image.id


def test_a_dataset_image_at_the_same_path_is_that_image(any_db: Engine, tmp_path: Path) -> None:
    """Changed rule (was: a new ad-hoc row beside it): a file with a data set image's path and content IS that image.

    Captioning a data set's own image folder then writes captions of the data set's rows, so a
    ``coco-json`` export carries its COCO ids and ``COCO.loadRes`` accepts it (tests/services/test_coco_roundtrip.py).
    """
    (path,) = _pictures(tmp_path, 1)
    dataset_image = _dataset_image(any_db, path, file_name=f"test/{path.name}")
    assert register_folder_images(db=any_db, paths=[path]) == [dataset_image]
    with session_scope(any_db) as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 1


def test_a_file_changed_since_the_import_is_not_the_dataset_image(any_db: Engine, tmp_path: Path) -> None:
    """Same path, other content: the data set's references describe the old photo, so the file gets an ad-hoc row."""
    (path,) = _pictures(tmp_path, 1)
    dataset_image = _dataset_image(any_db, path, content=b"the photo as it was imported")
    (image_id,) = register_folder_images(db=any_db, paths=[path])
    assert image_id != dataset_image and str(path) in _rows(any_db)


def test_a_copy_of_the_dataset_folder_elsewhere_links_each_dataset_image_once(any_db: Engine, tmp_path: Path) -> None:
    """Same content and name elsewhere: the data set's row; a renamed copy or a second copy of the same row: ad-hoc."""
    originals = _pictures(tmp_path / "dataset", 2)
    dataset_images = [_dataset_image(any_db, path) for path in originals]
    copies = tmp_path / "copy"
    copies.mkdir()
    first, second = copies / originals[0].name, copies / originals[1].name
    renamed, again = copies / "renamed.png", tmp_path / "again" / originals[0].name
    again.parent.mkdir()
    for target, source in (
        (first, originals[0]),
        (second, originals[1]),
        (renamed, originals[0]),
        (again, originals[0]),
    ):
        target.write_bytes(source.read_bytes())
    ids = register_folder_images(db=any_db, paths=[first, second, renamed, again])
    assert ids[:2] == dataset_images
    assert set(_rows(any_db)) == {str(renamed), str(again)}  # ad-hoc rows: another name, and a row already given
    assert len(set(ids)) == 4


def test_a_copy_is_not_linked_when_the_dataset_file_is_gone(any_db: Engine, tmp_path: Path) -> None:
    """The worker reads a data set image from the data set's path: without that file the copy stays ad-hoc."""
    (original,) = _pictures(tmp_path / "dataset", 1)
    copy = tmp_path / "copy" / original.name
    copy.parent.mkdir()
    copy.write_bytes(original.read_bytes())
    dataset_image = _dataset_image(any_db, original)
    original.unlink()
    (image_id,) = register_folder_images(db=any_db, paths=[copy])
    assert image_id != dataset_image and str(copy) in _rows(any_db)


def test_a_changed_file_loses_its_perceptual_hash_and_counts_as_new(any_db: Engine, tmp_path: Path) -> None:
    """New content at an old path: phash cleared and created_at moved (its old captions describe another photo)."""
    changed, same = _pictures(tmp_path, 2)
    ids = register_folder_images(db=any_db, paths=[changed, same])
    with session_scope(any_db) as session:
        session.execute(update(Image).where(Image.id.in_(ids)).values(phash="0123456789abcdef"))
        before = dict(session.execute(select(Image.id, Image.created_at).where(Image.id.in_(ids))).all())
    PILImage.new("RGB", (33, 44), (1, 2, 3)).save(changed)
    assert register_folder_images(db=any_db, paths=[changed, same]) == ids
    with session_scope(any_db) as session:
        after = {i: (h, t) for i, h, t in session.execute(select(Image.id, Image.phash, Image.created_at))}
    assert after[ids[0]][0] is None and after[ids[0]][1] > before[ids[0]]
    assert after[ids[1]] == ("0123456789abcdef", before[ids[1]])


def test_a_copy_links_only_to_a_dataset_file_inside_the_allowed_folders(any_db: Engine, tmp_path: Path) -> None:
    """The web view's roots: the worker would read the data set's file, so it must be inside them too."""
    add_model(any_db, "m")
    (original,) = _pictures(tmp_path / "dataset", 1)
    _dataset_image(any_db, original)
    copy = tmp_path / "uploads" / original.name
    copy.parent.mkdir()
    copy.write_bytes(original.read_bytes())

    def linked(roots: list[Path]) -> int:
        plan = captioning.create_caption_job(
            db=any_db,
            folder=copy.parent,
            model="m",
            engine_name="torch",
            recursive=False,
            batch_size=1,
            chunk_size=1,
            within=[root.resolve() for root in roots],
        )
        return plan.n_linked

    assert linked([copy.parent]) == 0
    assert linked([tmp_path]) == 1
