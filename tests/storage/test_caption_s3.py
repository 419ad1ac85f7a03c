"""Caption jobs over an object storage prefix: listing, per-object errors, read-ahead, and storage outages.

Against a real SeaweedFS S3 server (tests/seaweed.py); the engine is a stand-in that captions each
photo with its decoded size, so what is tested is what reaches it and what is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from sqlalchemy import Engine, select

from tests.data.hostile import make_hostile_folder
from tests.seaweed import SeaweedS3
from tests.store_helpers import add_model, chunk_states, get_job
from vicap_jobs.cli.main import cli
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Image, JobChunk
from vicap_jobs.pipeline.runner import run_chunk
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.storage.objects import write_bytes

pytestmark = pytest.mark.usefixtures("vicap_env")


class SizeEngine:
    """Captions each photo with its decoded size; counts what reaches it."""

    name = "size"

    def __init__(self) -> None:
        self.seen = 0

    def caption(self, images: Sequence[PILImage.Image]) -> list[str]:
        self.seen += len(images)
        return [f"{image.width}x{image.height}" for image in images]


class SizeEngines:
    device = "cpu"

    def __init__(self) -> None:
        self.engine = SizeEngine()

    def get(self, model_id: int, engine_name: str | None) -> SizeEngine:
        return self.engine


def upload_folder(local: Path, url: str) -> dict[str, bytes]:
    """Every regular file under ``local`` (links resolved, special files skipped) as an object under ``url``."""
    uploaded = {}
    for path in sorted(local.rglob("*")):
        if path.is_file() and not (path.is_symlink() and path.resolve().is_dir()):
            key = path.relative_to(local).as_posix()
            data = path.read_bytes()
            write_bytes(f"{url}/{key}", data)
            uploaded[key] = data
    return uploaded


def rows(db: Engine, job_id: int) -> dict[str, tuple[str, str | None, str | None]]:
    with session_scope(db) as session:
        query = select(Image.path, Caption.status, Caption.text, Caption.error).join(
            Image, Image.id == Caption.image_id
        )
        return {
            path: (status, text, error)
            for path, status, text, error in session.execute(query.where(Caption.job_id == job_id))
        }


def run_all(db: Engine, chunk_ids: list[int], engines: SizeEngines) -> list[str]:
    return [run_chunk(db=db, chunk_id=chunk_id, engines=engines, worker_name="w").status for chunk_id in chunk_ids]


@pytest.mark.parametrize("read_ahead", [0, 2])
def test_a_prefix_is_captioned_object_by_object_with_the_local_reasons_for_hostile_ones(
    sqlite_db: Engine,
    s3_bucket: str,
    tmp_path: Path,
    read_ahead: int,
    vicap_setenv: Callable[[str, str | None], None],
) -> None:
    vicap_setenv("read_ahead", str(read_ahead))
    expected = make_hostile_folder(tmp_path / "photos")
    upload_folder(tmp_path / "photos", f"{s3_bucket}/photos")
    write_bytes(f"{s3_bucket}/photos/.hidden.jpg", b"never listed")
    write_bytes(f"{s3_bucket}/photos/gone.jpg", expected and (tmp_path / "photos" / "good.jpg").read_bytes())
    add_model(sqlite_db)
    plan = create_caption_job(
        db=sqlite_db,
        folder=f"{s3_bucket}/photos/",
        model="spy",
        engine_name=None,
        recursive=True,
        batch_size=3,
        chunk_size=7,
    )
    from vicap_jobs.storage.objects import filesystem

    fs, path = filesystem(f"{s3_bucket}/photos/gone.jpg")
    fs.rm(path)  # deleted between submit and the worker's read
    engines = SizeEngines()
    statuses = run_all(sqlite_db, plan.chunk_ids, engines)
    assert set(statuses) == {"done"}
    written = rows(sqlite_db, plan.job_id)
    assert len(written) == plan.n_images == len(expected) + 1  # every listed object once; the hidden one not listed
    for key, outcome in expected.items():
        status, text, error = written[f"{s3_bucket}/photos/{key}"]
        if outcome == "ok":
            assert status == "ok" and text and "x" in text, key
        else:
            assert status == "error" and outcome in (error or ""), (key, error)
    assert written[f"{s3_bucket}/photos/gone.jpg"][2] == "object not found"
    assert engines.engine.seen == sum(1 for outcome in expected.values() if outcome == "ok")
    assert get_job(sqlite_db, plan.job_id).status == "succeeded"


def test_storage_going_away_sends_the_chunk_back_and_nothing_is_lost_or_written_twice(
    sqlite_db: Engine, own_s3: SeaweedS3, tmp_path: Path
) -> None:
    server = own_s3
    bucket = f"s3://{server.new_bucket()}"
    for i in range(10):
        image = PILImage.new("RGB", (20 + i, 10), (i * 20, 90, 160))
        local = tmp_path / f"p{i}.png"
        image.save(local)
        write_bytes(f"{bucket}/photos/p{i:02d}.png", local.read_bytes())
    add_model(sqlite_db)
    plan = create_caption_job(
        db=sqlite_db,
        folder=f"{bucket}/photos",
        model="spy",
        engine_name=None,
        recursive=False,
        batch_size=4,
        chunk_size=10,
    )
    (chunk_id,) = plan.chunk_ids
    engines = SizeEngines()
    server.stop()
    outcome = run_chunk(db=sqlite_db, chunk_id=chunk_id, engines=engines, worker_name="w")
    assert outcome.status == "requeued", rows(sqlite_db, plan.job_id)
    with session_scope(sqlite_db) as session:
        chunk = session.get(JobChunk, chunk_id)
        assert chunk is not None and (chunk.status, chunk.attempts) == ("queued", 1)
        assert "object storage unreachable" in (chunk.error or "")
    assert rows(sqlite_db, plan.job_id) == {}  # no photo blamed for the network
    server.start()
    assert run_chunk(db=sqlite_db, chunk_id=chunk_id, engines=engines, worker_name="w").status == "done"
    written = rows(sqlite_db, plan.job_id)
    assert [written[f"{bucket}/photos/p{i:02d}.png"] for i in range(10)] == [
        ("ok", f"{20 + i}x10", None) for i in range(10)
    ]
    assert engines.engine.seen == 10 and get_job(sqlite_db, plan.job_id).status == "succeeded"


def test_a_chunk_that_never_reaches_storage_is_given_up_after_max_attempts_with_the_reason(
    sqlite_db: Engine, own_s3: SeaweedS3, vicap_setenv: Callable[[str, str | None], None]
) -> None:
    server = own_s3
    vicap_setenv("max_chunk_attempts", "2")
    bucket = f"s3://{server.new_bucket()}"
    for i in range(3):
        write_bytes(f"{bucket}/photos/p{i}.jpg", b"bytes")
    add_model(sqlite_db)
    plan = create_caption_job(
        db=sqlite_db,
        folder=f"{bucket}/photos",
        model="spy",
        engine_name=None,
        recursive=False,
        batch_size=4,
        chunk_size=10,
    )
    server.stop()
    engines = SizeEngines()
    (chunk_id,) = plan.chunk_ids
    assert run_chunk(db=sqlite_db, chunk_id=chunk_id, engines=engines, worker_name="w").status == "requeued"
    assert run_chunk(db=sqlite_db, chunk_id=chunk_id, engines=engines, worker_name="w").status == "skipped"
    assert chunk_states(sqlite_db, plan.job_id) == ["failed"]
    written = rows(sqlite_db, plan.job_id)
    assert len(written) == 3 and all(
        status == "error" and (error or "").startswith("gave up after 2 attempts: object storage unreachable")
        for status, _, error in written.values()
    )
    assert get_job(sqlite_db, plan.job_id).status == "failed"


def test_submit_caption_takes_a_prefix_and_refuses_skip_known_for_it(
    s3_bucket: str, vicap_env: Path, tmp_path: Path
) -> None:
    from vicap_jobs.settings import get_settings

    write_bytes(f"{s3_bucket}/album/a.jpg", b"x")
    runner = CliRunner()
    refused = runner.invoke(cli, ["submit", "caption", "--dir", f"{s3_bucket}/album/", "--skip-known"])
    assert refused.exit_code != 0 and "--skip-known" in refused.output and "Traceback" not in refused.output
    missing = runner.invoke(cli, ["submit", "caption", "--dir", f"{s3_bucket}/nothing-here/"])
    assert missing.exit_code != 0 and "no model" in missing.output or "nothing found" in missing.output
    assert get_settings().home == vicap_env
