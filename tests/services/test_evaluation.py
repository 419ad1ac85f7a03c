"""Evaluation service: predictions files, the stored blind baseline, model evaluation through chunks, nightly targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from tests import store_helpers as jobs
from tests.export.tiny_models import save_tiny
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Evaluation
from vicap_jobs.errors import DatasetFormatError, InputError
from vicap_jobs.services.datasets import create_synth_dataset, import_split, set_nightly_splits
from vicap_jobs.services.evaluation import (
    create_evaluate_job,
    ensure_baseline,
    evaluate_model,
    evaluate_predictions,
)
from vicap_jobs.services.models import register_model
from vicap_jobs.services.nightly import nightly_targets
from vicap_jobs.services.runs import run_job


@pytest.fixture(scope="module")
def uit_store(make_sqlite_db, tmp_path_factory, uitviic_dir: Path) -> Engine:  # type: ignore[no-untyped-def]
    db = make_sqlite_db(tmp_path_factory.mktemp("uit"))
    for split in ("train", "test"):
        import_split(
            db=db,
            name="uitviic",
            fmt="coco",
            annotations=uitviic_dir / f"uitviic_captions_{split}2017.json",
            images_dir=None,
            split=split,
        )
    return db


def test_predictions_equal_to_a_reference_score_high_and_are_stored(
    uit_store: Engine, uitviic_dir: Path, tmp_path: Path
) -> None:
    data = json.loads((uitviic_dir / "uitviic_captions_test2017.json").read_text())
    first = {}
    for ann in data["annotations"]:
        first.setdefault(ann["image_id"], ann["caption"])
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"image_id": k, "caption": v} for k, v in first.items()], ensure_ascii=False))
    result = evaluate_predictions(db=uit_store, path=path, dataset="uitviic", split="test")
    assert result.scores.n_images == 231
    assert result.scores.bleu_4 == pytest.approx(1.0)  # every prediction is one of its own references
    assert result.baseline is not None and result.baseline.bleu_4 < 0.45
    print(
        f"\nUIT-ViIC test blind baseline: BLEU-4 {100 * result.baseline.bleu_4:.1f} ROUGE-L {100 * result.baseline.rouge_l:.1f} "
        f"caption {result.baseline_caption!r}"
    )
    with session_scope(uit_store) as session:
        rows = session.scalars(select(Evaluation).where(Evaluation.split == "test")).all()
        assert {r.is_baseline for r in rows} == {True, False}
        assert all(r.tokenization == "syllable" for r in rows)


def test_baseline_is_stored_once_and_chosen_on_train(uit_store: Engine) -> None:
    with session_scope(uit_store) as session:
        dataset_id = session.execute(text("SELECT id FROM datasets WHERE name = 'uitviic'")).scalar_one()
    first = ensure_baseline(db=uit_store, dataset_id=dataset_id, split="test", tokenization="syllable")
    second = ensure_baseline(db=uit_store, dataset_id=dataset_id, split="test", tokenization="syllable")
    assert first == second
    with session_scope(uit_store) as session:
        train_texts = set(
            session.execute(
                text(
                    "SELECT r.normalized FROM reference_captions r JOIN images i ON i.id = r.image_id WHERE i.split = 'train'"
                )
            ).scalars()
        )
        count = session.execute(
            text("SELECT count(*) FROM evaluations WHERE is_baseline AND split = 'test' AND tokenization = 'syllable'")
        ).scalar()
    assert first[1] in train_texts and count == 1


def test_csv_predictions_and_bad_files(uit_store: Engine, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1}]')
    with pytest.raises(DatasetFormatError, match="entry 0"):
        evaluate_predictions(db=uit_store, path=bad, dataset="uitviic", split="test")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("image_id,caption\n999999999,một cậu bé\n")
    with pytest.raises(DatasetFormatError, match="not in 'uitviic' test"):
        evaluate_predictions(db=uit_store, path=unknown, dataset="uitviic", split="test")
    with pytest.raises(InputError, match="not found"):
        evaluate_predictions(db=uit_store, path=tmp_path / "nope.json", dataset="uitviic", split="test")


def test_model_evaluation_runs_as_a_job_with_exportable_captions(sqlite_db: Engine, tmp_path: Path) -> None:
    create_synth_dataset(db=sqlite_db, name="s", n_images=40, seed=1, size=32, out_dir=tmp_path / "synth")
    checkpoint = save_tiny(tmp_path / "ckpt", "cnn-lstm", long=True)
    register_model(
        db=sqlite_db,
        name="tiny",
        family="cnn-lstm",
        backbone="tiny",
        artifact_dir=str(checkpoint),
        hyperparameters={},
        vocabulary=None,
        tokenization="syllable",
        image_size=32,
        dataset_id=None,
        trained_by_job_id=None,
    )
    result = evaluate_model(db=sqlite_db, model="tiny", dataset="s", split="test", engine_name="torch")
    job = jobs.get_job(sqlite_db, result.job_id)
    assert job.kind == "evaluate" and job.status == "succeeded" and "BLEU-4" in job.progress_message
    assert 0 <= result.scores.bleu_4 <= 1 and result.baseline is not None
    with session_scope(sqlite_db) as session:
        n_captions = session.execute(text("SELECT count(*) FROM captions WHERE job_id = :j"), {"j": job.id}).scalar()
    assert n_captions == result.scores.n_images
    # a redelivered evaluate task for a finished job does nothing
    redelivered = run_job(db=sqlite_db, job_id=job.id)
    assert redelivered.skipped and redelivered.status == "succeeded"
    with session_scope(sqlite_db) as session:
        assert (
            session.execute(text("SELECT count(*) FROM captions WHERE job_id = :j"), {"j": job.id}).scalar()
            == n_captions
        )
    assert set_nightly_splits(db=sqlite_db, name="s", splits=["test"]) is None
    assert nightly_targets(db=sqlite_db) == [("tiny", "s", "test")]


def test_create_evaluate_job_validates_early(sqlite_db: Engine, tmp_path: Path) -> None:
    from vicap_jobs.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no model"):
        create_evaluate_job(db=sqlite_db, model="ghost", dataset="x", split="test")
