"""The logic of ``bench/scale.py`` without its services: sizes, cost per image, flatness, inputs, the writer test."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine, func, select

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Caption, Job, Model

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scale = _load("scale")
common = _load("common")


def _run(images: int, submit_s: float, run_s: float, publish_s: float = 0.0, infer_s: float = 1.0) -> dict[str, float]:
    return {"images": images, "submit_s": submit_s, "publish_s": publish_s, "run_s": run_s, "chunk_infer_s": infer_s}


def test_sizes_parse_in_order_and_must_be_positive() -> None:
    assert scale.parse_sizes("1000, 10000,100000") == [1000, 10000, 100000]
    for bad in ("", "0", "10,-1"):
        with pytest.raises(SystemExit):
            scale.parse_sizes(bad)


def test_cost_per_image_counts_submit_publish_and_run() -> None:
    assert scale.cost_per_image(_run(1000, 1.0, 2.5, 0.5)) == pytest.approx(4.0)


def test_a_flat_cost_is_flat_and_a_growing_one_is_not() -> None:
    flat = scale.summarize_sizes(
        [_run(1000, 1, 3, infer_s=4), _run(10_000, 10, 31, infer_s=40), _run(100_000, 100, 290, infer_s=400)]
    )
    assert [s["cost_ratio_to_first"] for s in flat["sizes"]] == [1.0, 1.025, 0.975]
    assert [s["cost_per_image_ms"] for s in flat["sizes"]] == [4.0, 4.1, 3.9]
    assert [s["engine_ms_per_image"] for s in flat["sizes"]] == [4.0, 4.0, 4.0]
    assert [s["cost_per_engine_ms"] for s in flat["sizes"]] == [2.0, 2.05, 1.95]  # two workers' time per engine ms
    assert flat["flat"] is True and flat["worst_cost_ratio"] == 1.025
    assert flat["sizes"][1]["images"] == 10_000  # the run's own figures are kept
    growing = scale.summarize_sizes([_run(1000, 1, 3, infer_s=4), _run(10_000, 40, 31, infer_s=40)])
    assert growing["flat"] is False and growing["worst_cost_ratio"] == pytest.approx(1.775)
    assert growing["worst_cost_per_engine_ms_ratio"] == pytest.approx(1.775)
    assert scale.summarize_sizes([]) == {"sizes": [], "flat": None}


def test_a_machine_busy_during_one_size_slows_the_raw_cost_but_not_the_cost_in_engine_units() -> None:
    busy = scale.summarize_sizes([_run(1000, 1, 3, infer_s=4), _run(10_000, 15, 45, infer_s=60)])  # all 1.5x
    assert busy["worst_cost_ratio"] == 1.5
    assert busy["worst_cost_per_engine_ms_ratio"] == 1.0 and busy["flat"] is True


def test_quarters_compare_the_start_of_a_run_with_its_end() -> None:
    assert scale.quarters([1, 2, 3, 4, 5, 6, 7, 9]) == (2, 9)
    assert scale.quarters([5]) == (5, 5)
    assert scale.quarters([]) == (None, None)


def test_generated_jpegs_decode_and_all_differ(tmp_path: Path) -> None:
    paths = common.write_tiny_jpegs(tmp_path, 5, size=16, variants=2)
    assert [p.name for p in paths] == [f"{i:06d}.jpg" for i in range(5)]
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}) == 5
    for path in paths:
        with PILImage.open(path) as image:
            image.load()
            assert (image.format, image.size) == ("JPEG", (16, 16))


@pytest.mark.parametrize("wait_for_disk", [True, False])
def test_the_writer_alone_writes_every_row_once_per_batch_size_and_repeat(
    sqlite_db: Engine, wait_for_disk: bool
) -> None:
    with session_scope(sqlite_db) as session:
        session.add(Model(name="bench", family="cnn-lstm", artifact_dir="/nowhere"))
    rates = scale.writer_throughput(sqlite_db, rows=30, batch_sizes=[7, 30], repeats=2, wait_for_disk=wait_for_disk)
    assert set(rates) == {"7", "30"} and all(rate > 0 for rate in rates.values())
    with session_scope(sqlite_db) as session:
        assert session.scalar(select(func.count()).select_from(Caption)) == 4 * 30
        assert session.execute(select(Job.done, Job.failed)).all() == [(30, 3)] * 4


def test_the_timeline_splits_chunk_overhead_from_the_gaps_between_a_workers_chunks() -> None:
    chunk = scale.ChunkTimes
    chunks = [  # two workers, four chunks each; every chunk does 1 s of work
        *(chunk("a", 10.0 * i, 10.0 * i + 1.5, 0.25, 0.5, 0.25) for i in range(4)),  # 0.5 s overhead, 8.5 s gaps
        *(chunk("b", 10.0 * i + 5, 10.0 * i + 6 + i, 0.5, 0.25, 0.25) for i in range(4)),  # overhead 0, 1, 2, 3 s
    ]
    times = scale.timeline(chunks)
    assert (times["read_s"], times["infer_s"], times["write_s"]) == (3.0, 3.0, 2.0)
    # in start order the overheads are a0 b0 a1 b1 a2 b2 a3 b3 = 500 0 500 1000 500 2000 500 3000 ms
    assert times["chunk_overhead_ms"] == {"first_quarter": 250.0, "last_quarter": 1750.0, "mean": 1000.0}
    # gaps: worker a 8.5 s each, worker b 9, 8, 7 s; by start a b a b a b, one gap a quarter
    assert times["gap_ms"] == {"first_quarter": 8500.0, "last_quarter": 7000.0, "mean": 8250.0}
    assert scale.timeline([])["gap_ms"] == {"first_quarter": None, "last_quarter": None, "mean": None}
