"""Leak detection: exact and near duplicates across splits and data sets, stored once, and the evaluation warning."""

from __future__ import annotations

import importlib.util
import io
import shutil
import sys
from pathlib import Path
from types import ModuleType

import click
import imagehash
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from PIL import ImageEnhance
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import aliased

from tests import store_helpers as jobs
from tests.export.tiny_models import save_tiny
from vicap_jobs.cli.dataset_overlap import overlap as overlap_command
from vicap_jobs.cli.evaluate_cmd import evaluate as evaluate_command
from vicap_jobs.data.synth_scenes import SceneAttributes, render_scene
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Evaluation, Image, ImageOverlap
from vicap_jobs.errors import InputError, NotFoundError
from vicap_jobs.services.datasets import create_synth_dataset, get_dataset, import_split
from vicap_jobs.services.evaluation import evaluate_model
from vicap_jobs.services.models import register_model
from vicap_jobs.services.overlap import (
    DEFAULT_THRESHOLD,
    MAX_THRESHOLD,
    OverlapPair,
    candidate_threshold,
    find_overlaps,
    near_duplicates,
    store_pairs,
    training_overlap,
)

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench_overlap() -> ModuleType:
    """``bench/overlap.py``, whose generator draws the near-duplicate set the bench measures."""
    spec = importlib.util.spec_from_file_location("bench_overlap", BENCH / "overlap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _scene(sport: str, seed: int, size: int = 96) -> PILImage.Image:
    return render_scene(SceneAttributes(sport, 2, "đỏ", "ở giữa"), size=size, seed=seed)


def _save(image: PILImage.Image, path: Path, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        image.save(path)
    else:
        image.save(path, "JPEG", quality=quality)
    return path


def _reencoded(path: Path, target: Path, quality: int) -> Path:
    """The photo at ``path`` saved again as JPEG at ``quality``: other bytes, the same picture."""
    return _save(PILImage.open(path).convert("RGB"), target, quality)


def _import(db: Engine, name: str, split: str, folder: Path, files: list[str] | None = None) -> None:
    """Import ``folder``'s files (or the named ones) as one split, one caption each (captions.txt layout)."""
    names = files if files is not None else sorted(p.name for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    listing = folder / "captions.txt"
    listing.write_text("".join(f"{n}\tmột bức ảnh thể thao\n" for n in names), encoding="utf-8")
    import_split(db=db, name=name, fmt="captions-txt", annotations=listing, images_dir=folder, split=split)


def _stored(db: Engine) -> list[tuple[str, str, str, int]]:
    """(file a, file b, kind, distance) of every stored overlap, a being the smaller image id."""
    a, b = aliased(Image), aliased(Image)
    with session_scope(db) as session:
        rows = session.execute(
            select(a.file_name, b.file_name, ImageOverlap.kind, ImageOverlap.distance)
            .join(a, a.id == ImageOverlap.image_a_id)
            .join(b, b.id == ImageOverlap.image_b_id)
            .order_by(a.file_name, b.file_name)
        ).all()
    return [(a_file, b_file, kind, distance) for a_file, b_file, kind, distance in rows]


@pytest.fixture
def one_photo_in_three_splits(tmp_path: Path) -> Path:
    """train: p, q and a re-encoded q; val: a byte copy of p; test: p re-encoded at quality 50, and r."""
    root = tmp_path / "photos"
    p = _save(_scene("bóng đá", 1), root / "train" / "p.png")
    q = _save(_scene("quần vợt", 2), root / "train" / "q.png")
    _reencoded(q, root / "train" / "q_again.jpg", 60)  # a duplicate within one split leaks nothing
    (root / "val").mkdir()
    shutil.copyfile(p, root / "val" / "p_copy.png")
    _reencoded(p, root / "test" / "p_q50.jpg", 50)
    _save(_scene("bóng rổ", 3), root / "test" / "r.png")
    return root


def test_pairs_across_the_splits_are_counted_and_stored_once(any_db: Engine, one_photo_in_three_splits: Path) -> None:
    """train×val exact, train×test and val×test near; the within-train copy is not counted; a re-run stores nothing."""
    for split in ("train", "val", "test"):
        _import(any_db, "photos", split, one_photo_in_three_splits / split)
    report = find_overlaps(db=any_db, dataset_a="photos")
    counts = {(p.left, p.right): (p.exact, p.near, p.right_overlapping) for p in report.split_pairs}
    assert counts == {
        ("photos/train", "photos/val"): (1, 0, 1),
        ("photos/train", "photos/test"): (0, 1, 1),
        ("photos/val", "photos/test"): (0, 1, 1),
    }
    train_test = report.split_pairs[1].examples
    assert [(e.left_file, e.right_file, e.kind) for e in train_test] == [("p.png", "p_q50.jpg", "near")]
    assert 0 < train_test[0].distance <= DEFAULT_THRESHOLD
    assert report.n_stored == 3 and report.n_images == 6 and report.n_without_phash == 0
    stored = _stored(any_db)
    assert [(a, b, kind) for a, b, kind, _ in stored] == [
        ("p.png", "p_copy.png", "exact"),
        ("p.png", "p_q50.jpg", "near"),
        ("p_copy.png", "p_q50.jpg", "near"),
    ]
    again = find_overlaps(db=any_db, dataset_a="photos")
    assert again.n_stored == 0 and _stored(any_db) == stored
    assert [p.total for p in again.split_pairs] == [1, 1, 1]
    with session_scope(any_db) as session:
        assert session.scalar(select(func.count()).select_from(Image).where(Image.phash.is_(None))) == 0


def test_two_data_sets_compare_every_split_pair(any_db: Engine, one_photo_in_three_splits: Path) -> None:
    """A's train against B's test finds the re-encoded photo; pairs already stored are not added again."""
    root = one_photo_in_three_splits
    _import(any_db, "a", "train", root / "train", ["p.png", "q.png"])
    _import(any_db, "b", "test", root / "test")
    _import(any_db, "b", "val", root / "val")
    report = find_overlaps(db=any_db, dataset_a="a", dataset_b="b", examples=1)
    counts = {(p.left, p.right): (p.exact, p.near) for p in report.split_pairs}
    assert counts == {("a/train", "b/val"): (1, 0), ("a/train", "b/test"): (0, 1)}
    assert report.dataset_ids == (get_dataset(db=any_db, name="a").id, get_dataset(db=any_db, name="b").id)
    assert report.n_stored == 2
    assert find_overlaps(db=any_db, dataset_a="b").n_stored == 1  # b's own val × test pair
    assert find_overlaps(db=any_db, dataset_a="a", dataset_b="b").n_stored == 0


def test_unknown_data_sets_bad_thresholds_and_missing_files(sqlite_db: Engine, tmp_path: Path) -> None:
    """One-line errors; a file missing at import is reported as unchecked, not fatal."""
    folder = tmp_path / "one"
    _save(_scene("bóng chày", 4), folder / "a.png")
    (tmp_path / "copy").mkdir()
    shutil.copyfile(folder / "a.png", tmp_path / "copy" / "a.png")
    _import(sqlite_db, "one", "train", folder, ["a.png", "gone.png"])
    _import(sqlite_db, "one", "test", tmp_path / "copy")  # the same bytes in two splits: an exact pair
    report = find_overlaps(db=sqlite_db, dataset_a="one")
    assert report.n_without_phash == 1 and report.split_pairs[0].exact == 1
    with pytest.raises(NotFoundError, match="no data set named 'nope'; known: one"):
        find_overlaps(db=sqlite_db, dataset_a="nope")
    with pytest.raises(NotFoundError, match="'other'"):
        find_overlaps(db=sqlite_db, dataset_a="one", dataset_b="other")
    with pytest.raises(InputError, match="--threshold"):
        find_overlaps(db=sqlite_db, dataset_a="one", threshold=MAX_THRESHOLD + 1)


def test_generated_near_duplicates_are_found_at_95_percent_recall_and_precision(
    sqlite_db: Engine, tmp_path: Path
) -> None:
    """40 drawn scenes (train) against 4 variants each + 40 other scenes of the same sport (test), at the default threshold."""
    bench = _bench_overlap()
    dup = bench.duplicate_set(40, seed=0, negatives="sport")
    bench.write_duplicate_set(dup, tmp_path / "train", tmp_path / "test")
    _import(sqlite_db, "dups", "train", tmp_path / "train")
    _import(sqlite_db, "dups", "test", tmp_path / "test")
    report = find_overlaps(db=sqlite_db, dataset_a="dups")
    truth = {(dup.originals[i].name, dup.probes[j].name) for i, j in dup.truth()}
    found = {(a, b) for a, b, _, _ in _stored(sqlite_db)}
    hits = len(found & truth)
    recall, precision = hits / len(truth), hits / len(found)
    print(f"\nrecall {recall:.3f} precision {precision:.3f} at {DEFAULT_THRESHOLD} bits ({len(found)} pairs found)")
    assert len(truth) == 160 and report.split_pairs[0].near == len(found)
    assert recall >= 0.95 and precision >= 0.95


def test_training_overlap_counts_computed_and_stored_pairs(any_db: Engine, one_photo_in_three_splits: Path) -> None:
    """Evaluated {p_q50, r} against train {p, q, q_again}: p_q50 is found; r counts once a pair is stored for it."""
    root = one_photo_in_three_splits
    for split in ("train", "test"):
        _import(any_db, "photos", split, root / split)
    _import(any_db, "no-train", "test", root / "val")
    with session_scope(any_db) as session:
        ids = dict(session.execute(select(Image.file_name, Image.id)).all())
    photos = get_dataset(db=any_db, name="photos").id
    evaluated = [ids["p_q50.jpg"], ids["r.png"]]
    assert training_overlap(db=any_db, evaluated_ids=evaluated, training_dataset_id=photos) == 1
    assert [(a, b, kind) for a, b, kind, _ in _stored(any_db)] == [("p.png", "p_q50.jpg", "near")]
    # a pair found earlier at a looser threshold (`dataset overlap --threshold 96`) counts too
    store_pairs(db=any_db, pairs=[OverlapPair(ids["r.png"], ids["q.png"], "r.png", "q.png", "near", 90)])
    assert training_overlap(db=any_db, evaluated_ids=evaluated, training_dataset_id=photos) == 2
    assert training_overlap(db=any_db, evaluated_ids=[], training_dataset_id=photos) == 0
    no_train = get_dataset(db=any_db, name="no-train").id
    assert training_overlap(db=any_db, evaluated_ids=evaluated, training_dataset_id=no_train) is None
    # evaluating on the training split itself: every image is its own training image
    train_ids = [ids["p.png"], ids["q.png"], ids["q_again.jpg"]]
    assert training_overlap(db=any_db, evaluated_ids=train_ids, training_dataset_id=photos) == 3


def _register_tiny(db: Engine, checkpoint: Path, name: str, dataset_id: int | None) -> None:
    register_model(
        db=db,
        name=name,
        family="cnn-lstm",
        backbone="tiny",
        artifact_dir=str(checkpoint),
        hyperparameters={},
        vocabulary=None,
        tokenization="syllable",
        image_size=32,
        dataset_id=dataset_id,
        trained_by_job_id=None,
    )


def _leaky_store(db: Engine, tmp_path: Path) -> list[str]:
    """Data set "s" (synthetic, 10 val images) and "t" whose train split holds 3 of s's val photos; returns them."""
    create_synth_dataset(db=db, name="s", n_images=40, seed=1, size=64, out_dir=tmp_path / "synth", nightly=False)
    val = sorted((tmp_path / "synth" / "images" / "val").iterdir())
    train = sorted((tmp_path / "synth" / "images" / "train").iterdir())
    folder = tmp_path / "t-train"
    folder.mkdir()
    shutil.copyfile(val[0], folder / "copy0.jpg")
    shutil.copyfile(val[1], folder / "copy1.jpg")
    _reencoded(val[2], folder / "near2.jpg", 50)
    shutil.copyfile(train[0], folder / "other.jpg")  # in s's train split, not in what is evaluated
    _import(db, "t", "train", folder)
    checkpoint = save_tiny(tmp_path / "ckpt", "cnn-lstm", long=True)
    _register_tiny(db, checkpoint, "trained-on-t", get_dataset(db=db, name="t").id)
    _register_tiny(db, checkpoint, "unknown-training", None)
    return [p.name for p in val[:3]]


def test_evaluate_warns_and_stores_how_many_evaluated_images_duplicate_training_images(
    vicap_env: Path, tmp_path: Path
) -> None:
    """A model trained on t, evaluated on s/val: 3 of 10 flagged (stored, in the job message, printed); NULL without t."""
    from vicap_jobs.cli.common import open_store

    _, db = open_store()
    leaked = _leaky_store(db, tmp_path)
    result = CliRunner().invoke(
        evaluate_command, ["--model", "trained-on-t", "--dataset", "s", "--split", "val", "--engine", "torch"]
    )
    assert result.exit_code == 0, result.output
    warning = "warning: 3 of 10 evaluated images duplicate training images"
    assert warning in result.output
    with session_scope(db) as session:
        row = session.scalars(select(Evaluation).where(Evaluation.is_baseline.is_(False))).one()
        assert row.training_overlap == 3 and row.n_images == 10
        job = jobs.get_job(db, row.job_id) if row.job_id else None
    assert job is not None and warning in (job.progress_message or "")
    pairs = {(a, b) for a, b, _, _ in _stored(db)}
    assert pairs == {(leaked[0], "copy0.jpg"), (leaked[1], "copy1.jpg"), (leaked[2], "near2.jpg")}
    unknown = evaluate_model(db=db, model="unknown-training", dataset="s", split="val", engine_name="torch")
    assert unknown.training_overlap is None and unknown.overlap_warning is None
    with session_scope(db) as session:
        stored = session.execute(
            text("SELECT training_overlap FROM evaluations WHERE id = :id"), {"id": unknown.evaluation_id}
        ).scalar_one()
    assert stored is None


def _group() -> click.Group:
    group = click.Group("dataset")
    group.add_command(overlap_command)
    return group


def test_the_overlap_command_prints_counts_examples_and_the_sql(
    vicap_env: Path, one_photo_in_three_splits: Path
) -> None:
    """`dataset overlap photos`: a row per split pair, the example pair, the SQL to list them; unknown names: one line."""
    from vicap_jobs.cli.common import open_store

    _, db = open_store()
    for split in ("train", "val", "test"):
        _import(db, "photos", split, one_photo_in_three_splits / split)
    runner = CliRunner()
    result = runner.invoke(_group(), ["overlap", "photos", "--examples", "1"], prog_name="dataset")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("photos/train" in line and "photos/test" in line and "1 (50%)" in line for line in lines)
    assert "photos/train: p.png  ~  photos/test: p_q50.jpg" in result.output
    assert "photos/train: p.png  ~  photos/val: p_copy.png  (same file content)" in result.output
    assert "3 new pair(s) stored in the image_overlaps table" in result.output
    assert "FROM image_overlaps o JOIN images a" in result.output
    missing = runner.invoke(_group(), ["overlap", "photos", "ghost"], prog_name="dataset")
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == ["Error: no data set named 'ghost'; known: photos"]
    bad = runner.invoke(_group(), ["overlap", "photos", "--threshold", "99"], prog_name="dataset")
    assert bad.exit_code == 2 and "--threshold" in bad.output
    _import(db, "single", "test", one_photo_in_three_splits / "test")
    alone = runner.invoke(_group(), ["overlap", "single"], prog_name="dataset")
    assert alone.exit_code == 0 and "nothing to compare: single has fewer than two splits" in alone.output
    help_text = runner.invoke(_group(), ["overlap", "--help"], prog_name="dataset").output
    assert "Example:" in help_text and "vicap-jobs dataset overlap uitviic" in help_text


def test_re_encoding_keeps_the_stored_hash_close() -> None:
    """The premise of the near pairs in these tests: a JPEG re-encode of a drawn scene is within the threshold."""
    from vicap_jobs.data.phash import hamming, perceptual_hash

    scene = _scene("bóng đá", 1)
    buffer = io.BytesIO()
    scene.save(buffer, "JPEG", quality=50)
    again = PILImage.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    other = _scene("quần vợt", 2)
    assert hamming(perceptual_hash(scene), perceptual_hash(again)) <= DEFAULT_THRESHOLD
    assert hamming(perceptual_hash(scene), perceptual_hash(other)) > 1.5 * DEFAULT_THRESHOLD


def _tennis(seed: int) -> PILImage.Image:
    """One player in white, ball in the middle: the court colour and small placements come from the seed."""
    return render_scene(SceneAttributes("quần vợt", 1, "trắng", "ở giữa"), size=224, seed=seed)


def test_a_same_layout_scene_on_another_court_is_not_a_pair_but_edited_copies_are(
    sqlite_db: Engine, tmp_path: Path
) -> None:
    """Red court (train) vs another player on a blue court (test): no pair; its JPEG/resized/cropped/brighter copies: pairs.

    The 64-bit hash alone put these two scenes 8 bits apart, a pair at its default; the 256-bit
    verification sets them 96 apart although their index keys are close enough to be candidates.
    """
    red, blue = _tennis(11), _tennis(50)
    assert imagehash.phash(red.convert("L"), 8) - imagehash.phash(blue.convert("L"), 8) <= 8
    train, test = tmp_path / "train", tmp_path / "test"
    _save(red, train / "red.jpg")
    seen = PILImage.open(train / "red.jpg").convert("RGB")
    _save(seen, test / "jpeg40.jpg", quality=40)
    _save(seen.resize((140, 140), PILImage.Resampling.LANCZOS), test / "smaller.png")
    _save(seen.resize((300, 300), PILImage.Resampling.LANCZOS), test / "larger.png")
    _save(seen.crop((5, 3, 219, 218)), test / "cropped.png")  # 2-4 % cut off
    _save(ImageEnhance.Brightness(seen).enhance(1.2), test / "brighter.png")
    _save(ImageEnhance.Brightness(seen).enhance(0.8), test / "darker.png")
    _save(blue, test / "blue_court.jpg")
    _import(sqlite_db, "courts", "train", train)
    _import(sqlite_db, "courts", "test", test)
    report = find_overlaps(db=sqlite_db, dataset_a="courts")
    copies = {"jpeg40.jpg", "smaller.png", "larger.png", "cropped.png", "brighter.png", "darker.png"}
    assert {(a, b) for a, b, _, _ in _stored(sqlite_db)} == {("red.jpg", name) for name in copies}
    assert report.split_pairs[0].near == len(copies) and report.split_pairs[0].exact == 0
    assert all(0 <= distance <= DEFAULT_THRESHOLD for *_, distance in _stored(sqlite_db))
    from vicap_jobs.data.phash import hamming, index_key, perceptual_hash

    red_hash, blue_hash = perceptual_hash(seen), perceptual_hash(PILImage.open(test / "blue_court.jpg").convert("RGB"))
    assert (index_key(red_hash) ^ index_key(blue_hash)).bit_count() <= candidate_threshold(DEFAULT_THRESHOLD)
    assert hamming(red_hash, blue_hash) > DEFAULT_THRESHOLD  # a candidate, refused by the 256-bit verification


def test_near_duplicates_verifies_key_candidates_with_the_full_hash() -> None:
    """A pair needs keys within 3/16 of the threshold and hashes within it: close keys with far hashes, or keys too
    far apart (even with close hashes), are not pairs."""
    assert candidate_threshold(DEFAULT_THRESHOLD) == 12 and candidate_threshold(0) == 0
    # 16 rows of 4 hex digits; the key is the first 2 digits of each of the first 8 rows
    base = "0" * 64
    close = "1" + "0" * 63  # 1 bit apart, a key bit
    far_tail = "".join("00ff" if r < 8 else "ffff" for r in range(16))  # same key, 192 bits apart
    key_far = "".join("ff00" if r < 2 else "0000" for r in range(16))  # 16 bits apart, all of them key bits
    right = [(10, close), (11, far_tail), (12, key_far)]
    assert near_duplicates([(1, base)], right, DEFAULT_THRESHOLD) == [(1, 10, 1)]
    assert near_duplicates([(1, base)], right, 96) == [(1, 10, 1), (1, 12, 16)]  # candidates now within 18 bits
    assert near_duplicates([], right, DEFAULT_THRESHOLD) == [] and near_duplicates([(1, base)], [], 8) == []
