"""The chunk runner gives the photos it decodes their perceptual hash, once per content, written with the captions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine, event, select, update

from tests import store_helpers as jobs
from tests.jobs.spy_engine import SpyEngine, SpyEngines
from vicap_jobs.data.images import load_rgb
from vicap_jobs.data.phash import perceptual_hash
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Image
from vicap_jobs.pipeline import reader, runner
from vicap_jobs.pipeline.runner import run_chunk


def _hashes(db: Engine, image_ids: list[int]) -> list[str | None]:
    with session_scope(db) as session:
        by_id = dict(session.execute(select(Image.id, Image.phash).where(Image.id.in_(image_ids))).all())
    return [by_id[image_id] for image_id in image_ids]


def _set_images(db: Engine, image_ids: list[int], **values: Any) -> None:
    with session_scope(db) as session:
        session.execute(update(Image).where(Image.id.in_(image_ids)).values(**values))


def _path(db: Engine, image_id: int) -> Path:
    with session_scope(db) as session:
        return Path(session.scalars(select(Image.path).where(Image.id == image_id)).one())


def _count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the runner's perceptual_hash count its calls (by image width: the spy's images are told apart by it)."""
    widths: list[int] = []

    def counted(image: PILImage.Image) -> str:
        widths.append(image.width)
        return perceptual_hash(image)

    monkeypatch.setattr(reader, "perceptual_hash", counted)
    return widths


def test_decoded_images_get_their_hash_in_one_statement_with_the_caption_rows(
    any_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six images in three batches, one write: one UPDATE of images; an unreadable file keeps NULL."""
    monkeypatch.setattr(runner, "WRITE_EVERY_S", 3600.0)  # one write at the chunk's end
    model_id = jobs.add_model(any_db)
    ids = jobs.add_images(any_db, tmp_path / "img", 6)
    _path(any_db, ids[5]).write_bytes(b"not a png")
    job_id, (chunk_id,) = jobs.caption_job(any_db, ids, chunk_size=6, batch_size=2, model_id=model_id)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()).upper())

    event.listen(any_db, "before_cursor_execute", record)
    try:
        outcome = run_chunk(db=any_db, chunk_id=chunk_id, engines=SpyEngines(SpyEngine(ids)), worker_name="w")
    finally:
        event.remove(any_db, "before_cursor_execute", record)
    assert (outcome.n_ok, outcome.n_failed) == (5, 1)
    expected = [perceptual_hash(load_rgb(_path(any_db, image_id))) for image_id in ids[:5]]
    assert _hashes(any_db, ids) == [*expected, None]
    assert len([s for s in statements if s.startswith("UPDATE IMAGES")]) == 1
    assert len([s for s in statements if s.startswith("INSERT INTO CAPTIONS")]) == 1


def test_a_content_is_hashed_once_and_a_known_content_not_at_all(
    any_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two files with one new content: hashed once, both get it; a content hashed before: its hash, no hashing."""
    widths = _count_hashing(monkeypatch)
    model_id = jobs.add_model(any_db)
    first, twin, known, hashed, outside = jobs.add_images(any_db, tmp_path / "img", 5)
    _path(any_db, twin).write_bytes(_path(any_db, first).read_bytes())
    _set_images(any_db, [first, twin], sha256="a" * 64)
    _set_images(any_db, [known, outside], sha256="b" * 64)
    _set_images(any_db, [outside], phash="0123456789abcdef" * 4)  # the same content, hashed by an earlier job
    _set_images(any_db, [hashed], phash="fedcba9876543210" * 4)  # this row has its hash already
    job_id, (chunk_id,) = jobs.caption_job(
        any_db, [first, twin, known, hashed], chunk_size=4, batch_size=1, model_id=model_id
    )
    run_chunk(
        db=any_db, chunk_id=chunk_id, engines=SpyEngines(SpyEngine([first, twin, known, hashed])), worker_name="w"
    )
    first_hash = perceptual_hash(load_rgb(_path(any_db, first)))
    assert _hashes(any_db, [first, twin, known, hashed]) == [
        first_hash,
        first_hash,
        "0123456789abcdef" * 4,
        "fedcba9876543210" * 4,
    ]
    assert len(widths) == 1  # the twin, the known content and the hashed row were not hashed


def test_a_second_job_over_the_same_photos_hashes_nothing(
    any_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every image already has its hash after the first job: the second one decodes for the engine only."""
    widths = _count_hashing(monkeypatch)
    model_id = jobs.add_model(any_db)
    ids = jobs.add_images(any_db, tmp_path / "img", 3)
    for _ in range(2):
        _, (chunk_id,) = jobs.caption_job(any_db, ids, chunk_size=3, model_id=model_id)
        run_chunk(db=any_db, chunk_id=chunk_id, engines=SpyEngines(SpyEngine(ids)), worker_name="w")
    assert len(widths) == 3
    assert None not in _hashes(any_db, ids)


def test_a_failing_hash_still_captions_the_image(
    any_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hash is a bonus: when it raises, the image is captioned and keeps NULL."""

    def broken(image: PILImage.Image) -> str:
        raise ValueError("no hash today")

    monkeypatch.setattr(reader, "perceptual_hash", broken)
    model_id = jobs.add_model(any_db)
    ids = jobs.add_images(any_db, tmp_path / "img", 2)
    job_id, (chunk_id,) = jobs.caption_job(any_db, ids, chunk_size=2, model_id=model_id)
    outcome = run_chunk(db=any_db, chunk_id=chunk_id, engines=SpyEngines(SpyEngine(ids)), worker_name="w")
    assert (outcome.n_ok, outcome.n_failed) == (2, 0)
    assert _hashes(any_db, ids) == [None, None]
