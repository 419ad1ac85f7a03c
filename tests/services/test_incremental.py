"""Incremental captioning (``create_caption_job(skip_known=True)``, ``submit caption --skip-known``).

A counting engine stands in for the worker's engines: it captions each photo by its width and
records the widths it was given, so a test knows exactly which files reached an engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from sqlalchemy import Engine, select, update

from tests import store_helpers as jobs
from vicap_jobs.db.base import utcnow
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Image, Job, Model
from vicap_jobs.pipeline.runner import run_chunk
from vicap_jobs.services.captioning import CaptionJobPlan, create_caption_job


class WidthEngine:
    """Captions a photo with its width and the engine's name; records the widths it was given."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[int] = []

    def caption(self, images: Sequence[PILImage.Image]) -> list[str]:
        self.seen += [image.width for image in images]
        return [f"ảnh rộng {image.width} ({self.name})" for image in images]


class WidthEngines:
    """A worker's engines: one WidthEngine per (model, engine); the measured default resolves to ``onnx`` here."""

    device = "cpu"

    def __init__(self) -> None:
        self.engines: dict[tuple[int, str], WidthEngine] = {}

    def get(self, model_id: int, engine_name: str | None) -> WidthEngine:
        name = engine_name or "onnx"
        return self.engines.setdefault((model_id, name), WidthEngine(name))

    def take_seen(self) -> list[int]:
        """The widths every engine was given since the last call, sorted."""
        seen = sorted(width for engine in self.engines.values() for width in engine.seen)
        for engine in self.engines.values():
            engine.seen.clear()
        return seen


def _photos(folder: Path, widths: Sequence[int]) -> list[Path]:
    """One PNG per width (``w{width}.png``), ``width`` pixels wide: the engine tells them apart by it."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for width in widths:
        path = folder / f"w{width}.png"
        PILImage.new("RGB", (width, 6), (width % 256, 80, 160)).save(path)
        paths.append(path)
    return paths


def _caption(
    db: Engine,
    folder: Path,
    engines: WidthEngines,
    *,
    model: str = "m1",
    engine: str | None = "torch",
    skip_known: bool = True,
) -> CaptionJobPlan:
    """Submit a caption job over ``folder`` and run its chunks here, as a worker would."""
    plan = create_caption_job(
        db=db,
        folder=folder,
        model=model,
        engine_name=engine,
        recursive=False,
        batch_size=4,
        chunk_size=4,
        skip_known=skip_known,
    )
    for chunk_id in plan.chunk_ids:
        run_chunk(db=db, chunk_id=chunk_id, engines=engines, worker_name="test")
    return plan


def _rows(db: Engine, job_id: int) -> dict[str, Caption]:
    """file name → the job's caption row."""
    with session_scope(db) as session:
        rows = session.execute(
            select(Image.file_name, Caption).join(Image, Image.id == Caption.image_id).where(Caption.job_id == job_id)
        ).all()
        session.expunge_all()
    named = {name: caption for name, caption in rows}
    assert len(named) == len(rows)  # one row per file
    return named


def test_only_new_files_reach_the_engine_and_every_file_has_one_caption(any_db: Engine, tmp_path: Path) -> None:
    """Four photos captioned, two added: the second run sends the two new ones and copies the four earlier captions."""
    jobs.add_model(any_db, "m1")
    engines = WidthEngines()
    folder = tmp_path / "photos"
    _photos(folder, [20, 21, 22, 23])
    first = _caption(any_db, folder, engines, skip_known=False)
    assert engines.take_seen() == [20, 21, 22, 23]
    _photos(folder, [24, 25])

    second = _caption(any_db, folder, engines)

    assert engines.take_seen() == [24, 25]
    assert (second.n_images, second.n_reused, len(second.chunk_ids)) == (6, 4, 1)
    earlier, rows = _rows(any_db, first.job_id), _rows(any_db, second.job_id)
    assert sorted(rows) == [f"w{width}.png" for width in range(20, 26)]
    for name, row in rows.items():
        assert row.status == "ok"
        if name in earlier:
            assert (row.reused_from_id, row.text, row.engine) == (earlier[name].id, earlier[name].text, "torch")
            assert row.latency_ms is None  # no engine ran for it in this job
        else:
            assert row.reused_from_id is None and row.latency_ms is not None
    job, summary = jobs.get_job(any_db, second.job_id), jobs.job_summary(any_db, second.job_id)
    assert (job.status, job.total, job.done, job.failed) == ("succeeded", 6, 6, 0)
    assert summary.reused == 4 and summary.params["skip_known"] is True
    assert summary.progress_message == "reused 4 earlier caption(s) of the same content; 2 to caption"


def test_a_changed_file_is_captioned_again(any_db: Engine, tmp_path: Path) -> None:
    """Same name, new content (another sha256): it reaches the engine; the unchanged ones do not."""
    jobs.add_model(any_db, "m1")
    engines = WidthEngines()
    folder = tmp_path / "photos"
    changed, _ = _photos(folder, [20, 21])
    _caption(any_db, folder, engines, skip_known=False)
    engines.take_seen()
    PILImage.new("RGB", (30, 6), (1, 2, 3)).save(changed)

    plan = _caption(any_db, folder, engines)

    assert engines.take_seen() == [30] and plan.n_reused == 1
    row = _rows(any_db, plan.job_id)[changed.name]
    assert (row.text, row.reused_from_id) == ("ảnh rộng 30 (torch)", None)


def test_another_model_or_engine_reuses_nothing(any_db: Engine, tmp_path: Path) -> None:
    """Captions count only for the same model and engine; an unset engine matches only jobs that left it unset."""
    jobs.add_model(any_db, "m1")
    jobs.add_model(any_db, "m2")
    engines = WidthEngines()
    folder = tmp_path / "photos"
    _photos(folder, [20, 21])
    _caption(any_db, folder, engines, skip_known=False)  # m1, torch
    engines.take_seen()

    for model, engine in (("m2", "torch"), ("m1", "torch-bf16"), ("m1", None)):
        plan = _caption(any_db, folder, engines, model=model, engine=engine)
        assert (plan.n_reused, engines.take_seen()) == (0, [20, 21]), (model, engine)

    again = _caption(any_db, folder, engines, engine=None)  # the measured default's captions, whatever it measured
    assert (again.n_reused, engines.take_seen()) == (2, [])
    assert {row.engine for row in _rows(any_db, again.job_id).values()} == {"onnx"}
    torch = _caption(any_db, folder, engines, engine="torch")  # the first job's, not the newer torch-bf16 ones
    assert {row.text for row in _rows(any_db, torch.job_id).values()} == {"ảnh rộng 20 (torch)", "ảnh rộng 21 (torch)"}


def test_a_folder_known_entirely_ends_at_once_and_copies_point_at_the_engines_caption(
    any_db: Engine, tmp_path: Path
) -> None:
    """No chunk, succeeded at submit; a copy of a copy points at the caption the engine wrote."""
    jobs.add_model(any_db, "m1")
    engines = WidthEngines()
    folder = tmp_path / "photos"
    _photos(folder, [20, 21, 22])
    first = _caption(any_db, folder, engines, skip_known=False)
    second = _caption(any_db, folder, engines)
    third = _caption(any_db, folder, engines)

    assert second.chunk_ids == [] and third.chunk_ids == [] and engines.take_seen() == [20, 21, 22]
    job = jobs.get_job(any_db, third.job_id)
    assert (job.status, job.done, job.total, job.failed) == ("succeeded", 3, 3, 0)
    assert job.finished_at is not None
    originals = {name: row.id for name, row in _rows(any_db, first.job_id).items()}
    assert {name: row.reused_from_id for name, row in _rows(any_db, third.job_id).items()} == originals


def test_failed_images_are_captioned_again(any_db: Engine, tmp_path: Path) -> None:
    """Only ok captions are reused: an unreadable file goes back to a worker (and fails again, with its reason)."""
    jobs.add_model(any_db, "m1")
    engines = WidthEngines()
    folder = tmp_path / "photos"
    _photos(folder, [20])
    (folder / "broken.png").write_bytes(b"not a png")
    _caption(any_db, folder, engines, skip_known=False)

    plan = _caption(any_db, folder, engines)

    assert (plan.n_reused, len(plan.chunk_ids)) == (1, 1)
    broken = _rows(any_db, plan.job_id)["broken.png"]
    assert (broken.status, broken.reused_from_id) == ("error", None)
    job = jobs.get_job(any_db, plan.job_id)
    assert (job.status, job.done, job.failed) == ("succeeded", 2, 1)


def test_captions_made_before_the_models_weights_or_export_are_not_reused(any_db: Engine, tmp_path: Path) -> None:
    """A re-export invalidates the export engines' captions only; a re-training invalidates every caption."""
    model_id = jobs.add_model(any_db, "m1")
    with session_scope(any_db) as session:
        session.execute(update(Model).where(Model.id == model_id).values(onnx_path=str(tmp_path), exported_at=utcnow()))
    engines = WidthEngines()
    folder = tmp_path / "photos"
    _photos(folder, [20])
    for engine in ("torch", "onnx"):
        _caption(any_db, folder, engines, engine=engine, skip_known=False)
    with session_scope(any_db) as session:  # exported again
        session.execute(update(Model).where(Model.id == model_id).values(exported_at=utcnow()))
    assert _caption(any_db, folder, engines, engine="torch").n_reused == 1
    assert _caption(any_db, folder, engines, engine="onnx").n_reused == 0

    train_job = jobs.new_job(any_db, "train", {"name": "m1", "family": "cnn-lstm", "dataset": "d", "options": {}})
    with session_scope(any_db) as session:  # trained again under the same name
        session.execute(update(Job).where(Job.id == train_job).values(status="succeeded", finished_at=utcnow()))
        session.execute(update(Model).where(Model.id == model_id).values(trained_by_job_id=train_job))
    assert _caption(any_db, folder, engines, engine="torch").n_reused == 0


def test_submit_caption_skip_known_says_how_many_it_reused(
    vicap_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI prints the reused count at submit, in the --wait outcome, and `jobs show` carries it."""
    from vicap_jobs.cli.common import open_store
    from vicap_jobs.cli.main import cli
    from vicap_jobs.worker import publish

    sent: list[list[int]] = []
    monkeypatch.setattr(publish, "_send_all", lambda task, messages, *, queue: sent.append(list(messages)))
    _, db = open_store()
    jobs.add_model(db, "m1")
    engines = WidthEngines()
    folder = tmp_path / "photos"
    _photos(folder, [20, 21, 22])
    _caption(db, folder, engines, skip_known=False)
    _photos(folder, [23])
    args = ["submit", "caption", "--dir", str(folder), "--model", "m1", "--engine", "torch", "--skip-known"]

    submitted = CliRunner().invoke(cli, args, prog_name="vicap-jobs")
    assert submitted.exit_code == 0, submitted.output
    assert "job 2 queued: 4 images in 1 chunk(s) on queue vicap; 3 reused from earlier jobs" in submitted.output
    assert len(sent) == 1 and len(sent[0]) == 1  # one chunk published: the new photo
    (chunk_id,) = sent[0]
    run_chunk(db=db, chunk_id=chunk_id, engines=engines, worker_name="test")
    shown = CliRunner().invoke(cli, ["jobs", "show", "2"], prog_name="vicap-jobs")
    assert "reused 3 earlier caption(s)" in shown.output, shown.output

    waited = CliRunner().invoke(cli, [*args, "--wait"], prog_name="vicap-jobs")
    assert waited.exit_code == 0, waited.output
    assert "job 3 succeeded: all 4 images were captioned before; 4 reused from earlier jobs" in waited.output
    assert "4 captioned, 0 failed (4 of them reused from earlier jobs)" in waited.output
    assert len(sent) == 1  # nothing published for a job with nothing left to caption
