"""The COCO round trip: import a COCO data set, caption its image folder, export coco-json, load it with pycocotools.

Before images had one identity, the caption job registered the data set's files as new ad-hoc
rows, so the export carried the store's ids and ``COCO.loadRes`` refused it ("Results do not
correspond to current coco set").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from tests.worker.conftest import build_tiny_checkpoint, import_coco_dataset, register_tiny_model
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Image
from vicap_jobs.pipeline.runner import run_chunk
from vicap_jobs.services.captioning import CaptionJobPlan, create_caption_job
from vicap_jobs.services.captions_export import export_captions
from vicap_jobs.services.evaluation import evaluate_model
from vicap_jobs.services.model_engines import EngineCache

coco_module = pytest.importorskip("pycocotools.coco")
bleu_module = pytest.importorskip("pycocoevalcap.bleu.bleu")

N_TEST = 6


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model") / "tiny")


def _caption_folder(db: Engine, folder: Path) -> CaptionJobPlan:
    """``submit caption --dir folder`` with the tiny model, its chunks run here as a worker runs them."""
    plan = create_caption_job(
        db=db, folder=folder, model="tiny", engine_name="torch", recursive=False, batch_size=4, chunk_size=4
    )
    engines = EngineCache(db=db)
    for chunk_id in plan.chunk_ids:
        run_chunk(db=db, chunk_id=chunk_id, engines=engines, worker_name="test")
    return plan


def _load_results(annotation_file: Path, results_file: Path) -> tuple[Any, Any]:
    """(the data set, the results) as pycocotools loads them; loadRes raises on ids the data set does not have."""
    coco = coco_module.COCO(str(annotation_file))
    return coco, coco.loadRes(str(results_file))


def test_a_captioned_coco_folder_exports_the_datasets_ids_and_loads_into_pycocotools(
    sqlite_db: Engine, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """One result per data set image, under its COCO id; pycocoevalcap's BLEU scores it against the references."""
    files = import_coco_dataset(sqlite_db, tmp_path / "coco", n_test=N_TEST)
    register_tiny_model(sqlite_db, tiny_checkpoint)
    with session_scope(sqlite_db) as session:
        rows_before = session.scalar(select(func.count()).select_from(Image))

    plan = _caption_folder(sqlite_db, tmp_path / "coco" / "test")

    assert (plan.n_images, plan.n_linked) == (N_TEST, N_TEST)
    with session_scope(sqlite_db) as session:
        assert session.scalar(select(func.count()).select_from(Image)) == rows_before  # no ad-hoc copy of any file
        datasets = session.scalars(
            select(Image.dataset_id).join(Caption, Caption.image_id == Image.id).where(Caption.job_id == plan.job_id)
        ).all()
    assert len(datasets) == N_TEST and None not in datasets
    results_file = tmp_path / "results.json"
    _, n_written = export_captions(db=sqlite_db, job_id=plan.job_id, fmt="coco-json", out=results_file)
    assert n_written == N_TEST

    coco, results = _load_results(files["test"], results_file)
    assert sorted(results.getImgIds()) == sorted(coco.getImgIds())
    assert all(len(results.imgToAnns[i]) == 1 for i in coco.getImgIds())
    references = {i: [a["caption"] for a in coco.imgToAnns[i]] for i in coco.getImgIds()}
    candidates = {i: [results.imgToAnns[i][0]["caption"]] for i in coco.getImgIds()}
    scores, _ = bleu_module.Bleu(4).compute_score(references, candidates, verbose=0)
    assert len(scores) == 4 and all(0.0 <= score <= 1.0 for score in scores)


def test_a_copy_of_the_coco_folder_elsewhere_exports_the_datasets_ids_too(
    sqlite_db: Engine, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """Matched by content and file name while the data set's own files are still there."""
    files = import_coco_dataset(sqlite_db, tmp_path / "coco", n_test=N_TEST)
    register_tiny_model(sqlite_db, tiny_checkpoint)
    copy = tmp_path / "elsewhere" / "test"
    shutil.copytree(tmp_path / "coco" / "test", copy)

    plan = _caption_folder(sqlite_db, copy)

    assert plan.n_linked == N_TEST
    results_file = tmp_path / "results.json"
    export_captions(db=sqlite_db, job_id=plan.job_id, fmt="coco-json", out=results_file)
    coco_ids = {image["id"] for image in json.loads(files["test"].read_text(encoding="utf-8"))["images"]}
    assert {r["image_id"] for r in json.loads(results_file.read_text(encoding="utf-8"))} == coco_ids
    coco, results = _load_results(files["test"], results_file)
    assert sorted(results.getImgIds()) == sorted(coco.getImgIds())


def test_an_evaluated_split_is_not_captioned_again_with_skip_known(
    sqlite_db: Engine, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """Its folder is the split's images: the evaluation's captions are copied, no chunk is queued, the export loads."""
    files = import_coco_dataset(sqlite_db, tmp_path / "coco", n_test=N_TEST)
    register_tiny_model(sqlite_db, tiny_checkpoint)
    evaluation = evaluate_model(db=sqlite_db, model="tiny", dataset="coco-mini", split="test", engine_name="torch")

    plan = create_caption_job(
        db=sqlite_db,
        folder=tmp_path / "coco" / "test",
        model="tiny",
        engine_name="torch",
        recursive=False,
        batch_size=4,
        chunk_size=4,
        skip_known=True,
    )

    assert (plan.n_reused, plan.chunk_ids) == (N_TEST, [])
    with session_scope(sqlite_db) as session:
        evaluated = dict(
            session.execute(select(Caption.image_id, Caption.id).where(Caption.job_id == evaluation.job_id)).all()
        )
        copied = dict(
            session.execute(select(Caption.image_id, Caption.reused_from_id).where(Caption.job_id == plan.job_id)).all()
        )
    assert copied == evaluated  # the same data set rows, each pointing at the evaluation's caption
    results_file = tmp_path / "results.json"
    export_captions(db=sqlite_db, job_id=plan.job_id, fmt="coco-json", out=results_file)
    coco, results = _load_results(files["test"], results_file)
    assert sorted(results.getImgIds()) == sorted(coco.getImgIds())
