"""bench/gpu_bulk.py's logic through its CPU dry run: batching, order, stage times, agreement, the result file.

The GPU figures themselves come from a lent GPU machine (bench/gpu_run.sh); these tests
run the same pipeline on the CPU with tiny sizes, so a GPU session only has to run it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_bulk  # noqa: E402

from tests.export.tiny_models import save_tiny  # noqa: E402
from vicap_jobs.data.images import load_rgb  # noqa: E402
from vicap_jobs.engines import DecodeOptions, ModelArtifacts, load_engine  # noqa: E402

REAL_RESULT = BENCH / "results" / "gpu_bulk.json"
TORCH_ONLY = ["--dry-run", "--engines", "torch", "--precisions", "bf16,fp32"]


def _snapshot(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> tuple[gpu_bulk.Report, Any, bytes | None]:
    """One dry run of the torch variants (both decoders, three step modes, two batch sizes, bf16 and fp32).

    The model is a tiny attention model overfitted on four captions: unlike a random one, its
    captions differ between images (4 distinct among the 20), so a batch out of order would show.
    """
    before = _snapshot(REAL_RESULT)
    work = tmp_path_factory.mktemp("gpu-bulk")
    checkpoint = save_tiny(work / "trained", "cnn-lstm-attn", trained=True)
    argv = [*TORCH_ONLY, "--work-dir", str(work), "--out", str(work / "out" / "result.json")]
    args = gpu_bulk.parse_args([*argv, "--checkpoint", str(checkpoint)])
    return gpu_bulk.run(args), args, before


def _paths(args: Any) -> list[str]:
    return json.loads((args.work_dir / "images" / "images.json").read_text())["paths"]


def test_plan_is_reference_main_then_one_factor_at_a_time(dry: tuple[gpu_bulk.Report, Any, bytes | None]) -> None:
    _, args, _ = dry
    names = [v.name for v in gpu_bulk.plan_variants(args)]
    assert names == [
        "attn/torch/fp32/b8/cpu-threads/eager",  # the reference: fp32 on the product's (Pillow) pixels
        "attn/torch/bf16/b8/gpu/eager",  # the main variant
        "attn/torch/bf16/b16/gpu/eager",  # its batch size 8 is not repeated
        "attn/torch/bf16/b8/cpu-threads/eager",
        "attn/torch/bf16/b8/gpu/cudagraph",
        "attn/torch/bf16/b8/gpu/compile",
        "attn/torch/fp32/b8/gpu/eager",
    ]


def test_every_image_is_captioned_once_in_order(dry: tuple[gpu_bulk.Report, Any, bytes | None]) -> None:
    report, args, _ = dry
    paths = _paths(args)
    assert len(paths) == args.n_images == 20  # 20 = 8 + 8 + 4 and 16 + 4: the last batch is padded
    assert set(report.captions) == set(report.payload["variants"])
    for name, rows in report.captions.items():
        assert [path for path, _ in rows] == paths, name
        assert all(isinstance(caption, str) and caption for _, caption in rows), name
        result = report.payload["variants"][name]
        assert result["images"] == len(paths) and not result["partial"]
        assert result["batches"] == -(-len(paths) // result["variant"]["batch_size"])


def test_reference_captions_are_the_products(dry: tuple[gpu_bulk.Report, Any, bytes | None]) -> None:
    """fp32 + Pillow decoding through the pipeline = the torch engine's caption() on load_rgb images."""
    report, args, _ = dry
    rows = report.captions["attn/torch/fp32/b8/cpu-threads/eager"]
    assert len({caption for _, caption in rows}) > 1  # captions differ by image, so order mistakes would show
    engine = load_engine(
        "torch", ModelArtifacts(args.checkpoint), decode=DecodeOptions(beam_size=args.beam_size, max_len=args.max_len)
    )
    assert [caption for _, caption in rows] == engine.caption([load_rgb(Path(path)) for path, _ in rows])


def test_captured_and_compiled_steps_give_the_eager_captions(dry: tuple[gpu_bulk.Report, Any, bytes | None]) -> None:
    report, _, _ = dry
    eager = report.captions["attn/torch/bf16/b8/gpu/eager"]
    assert report.captions["attn/torch/bf16/b8/gpu/cudagraph"] == eager
    assert report.captions["attn/torch/bf16/b8/gpu/compile"] == eager


def test_stage_times_and_figures(dry: tuple[gpu_bulk.Report, Any, bytes | None]) -> None:
    report, _, _ = dry
    for name, result in report.payload["variants"].items():
        assert result["status"] == "ok", (name, result.get("reason"))
        assert list(result["stage_seconds"]) == list(gpu_bulk.STAGES)
        assert all(seconds > 0 for seconds in result["stage_seconds"].values()), name
        assert result["images_per_s"] == pytest.approx(result["images"] / result["wall_seconds"], rel=0.01)
        assert result["wall_seconds"] > 0 and result["input_wait_seconds"] >= 0
        assert result["gpu_util"]["samples"] == 0 and result["peak_gpu_mib"] is None  # no GPU in a dry run
        assert result["mean_caption_words"] > 0


def test_agreement_is_computed_against_the_fp32_references(dry: tuple[gpu_bulk.Report, Any, bytes | None]) -> None:
    report, _, _ = dry
    variants = report.payload["variants"]
    assert variants["attn/torch/fp32/b8/cpu-threads/eager"]["agreement"] == {}  # the reference itself
    main = variants["attn/torch/bf16/b8/gpu/eager"]["agreement"]
    assert main["vs_fp32_pillow"]["reference"] == "attn/torch/fp32/b8/cpu-threads/eager"
    assert main["vs_fp32_same_decoder"]["reference"] == "attn/torch/fp32/b8/gpu/eager"
    for label, found in main.items():
        reference = dict(report.captions[found["reference"]])
        rows = report.captions["attn/torch/bf16/b8/gpu/eager"]
        expected = sum(caption == reference[path] for path, caption in rows) / len(rows)
        assert found["compared"] == len(rows) and found["same_captions"] == pytest.approx(expected, abs=1e-4), label


def test_result_file_shape_and_the_real_result_untouched(dry: tuple[gpu_bulk.Report, Any, bytes | None]) -> None:
    report, args, before = dry
    assert report.path == args.out and report.path.parent != REAL_RESULT.parent
    saved = json.loads(report.path.read_text())
    assert saved["benchmark"] == "gpu_bulk_dryrun" and saved["dry_run"] is True and saved["gpu"] is None
    assert {"when", "machine", "versions", "config", "model", "images", "setup", "variants", "summary", "notes"} <= set(
        saved
    )
    assert saved["summary"]["target_met"] is None  # no GPU figure from a dry run
    assert saved["summary"]["best_attn_variant"] in saved["variants"]
    assert saved["summary"]["variants_ok"] == len(saved["variants"])
    assert saved["model"]["weights"] == f"given checkpoint {args.checkpoint}"
    parity = saved["setup"]["gpu_decode_vs_pillow"]
    assert parity["images"] == 20 and parity["failures"] == 0 and parity["mean_levels"] < 0.5
    assert _snapshot(REAL_RESULT) == before


def test_budget_skips_variants_but_still_writes(dry: tuple[gpu_bulk.Report, Any, bytes | None]) -> None:
    _, args, _ = dry  # reuses the work folder: images and model are already there
    out = args.work_dir / "budget.json"
    report = gpu_bulk.run(
        gpu_bulk.parse_args([*TORCH_ONLY, "--work-dir", str(args.work_dir), "--out", str(out), "--budget-s", "0"])
    )
    assert report.captions == {}
    statuses = {r["status"] for r in report.payload["variants"].values()}
    assert statuses == {"skipped"}
    assert all(r["reason"].startswith("time budget") for r in report.payload["variants"].values())
    saved = json.loads(out.read_text())
    assert saved["summary"]["variants_ok"] == 0
    assert saved["model"]["weights"].startswith("random init")  # no --checkpoint: the bench built one


def test_a_dry_run_refuses_to_write_into_bench_results(tmp_path: Path) -> None:
    args = gpu_bulk.parse_args(["--dry-run", "--out", str(REAL_RESULT)])
    with pytest.raises(SystemExit, match="never writes"):
        gpu_bulk.save({}, args, tmp_path)


def test_graphed_step_bookkeeping() -> None:
    """Passed-through parts come back as the caller's tensors, others as copies; unchanged inputs not re-copied."""
    calls: list[int] = []

    def step(tokens: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        memory, h = state
        calls.append(1)
        return memory.sum(1) + tokens, (memory, h + tokens[:, None])  # memory passed through

    graphed = gpu_bulk.GraphedStep(step)
    memory, h = torch.ones(2, 3), torch.zeros(2, 4)
    logits, (memory_out, h1) = graphed(torch.tensor([1.0, 2.0]), (memory, h))
    assert memory_out is memory  # beam search sees it unchanged and skips reordering it
    assert torch.equal(logits, torch.tensor([4.0, 5.0])) and torch.equal(h1, torch.tensor([[1.0] * 4, [2.0] * 4]))
    logits2, (_, h2) = graphed(torch.tensor([10.0, 10.0]), (memory, h1))
    assert torch.equal(h2, h1 + 10) and torch.equal(logits2, torch.tensor([13.0, 13.0]))
    assert torch.equal(h1, torch.tensor([[1.0] * 4, [2.0] * 4]))  # the first call's outputs were copies
    graph = next(iter(graphed.graphs.values()))
    assert graph["seen"][1] is memory  # the same memory tensor twice: copied into the static buffer once
    new_memory = torch.full((2, 3), 2.0)
    logits3, (memory_out3, _) = graphed(torch.tensor([0.0, 0.0]), (new_memory, h))
    assert memory_out3 is new_memory and torch.equal(logits3, torch.tensor([6.0, 6.0]))
    assert len(graphed.graphs) == 1


@pytest.mark.parametrize(("line", "parsed"), [("87, 12345", (87.0, 12345.0)), ("[N/A], 3", None), ("", None)])
def test_parse_smi_line(line: str, parsed: tuple[float, float] | None) -> None:
    assert gpu_bulk.parse_smi_line(line) == parsed


@pytest.mark.slow
def test_onnx_and_vision_language_variants(tmp_path: Path) -> None:
    """The ONNX engine (CPU provider here) and BLIP in fp32 and int8 (torchao here) through the same pipeline."""
    pytest.importorskip("torchao")
    args = gpu_bulk.parse_args(
        ["--dry-run", "--engines", "torch,onnx,vlp", "--precisions", "fp32", "--steps", "eager"]
        + ["--decoders", "gpu", "--batch-sizes", "8", "--work-dir", str(tmp_path)]
    )
    report = gpu_bulk.run(args)
    variants = report.payload["variants"]
    assert {name: r["status"] for name, r in variants.items()} == dict.fromkeys(
        [
            "attn/torch/fp32/b8/cpu-threads/eager",
            "attn/torch/fp32/b8/gpu/eager",
            "attn/onnx/fp32/b8/gpu/eager",
            "vlp/torch/fp32/b8/gpu/eager",
            "vlp/int8/int8/b8/gpu/eager",
        ],
        "ok",
    )
    onnx = variants["attn/onnx/fp32/b8/gpu/eager"]["agreement"]["vs_fp32_same_decoder"]
    assert onnx["reference"] == "attn/torch/fp32/b8/gpu/eager" and onnx["same_captions"] >= 0.9
    int8 = variants["vlp/int8/int8/b8/gpu/eager"]["agreement"]["vs_fp32_same_decoder"]
    assert int8["reference"] == "vlp/torch/fp32/b8/gpu/eager" and int8["compared"] == args.n_images
    assert report.payload["setup"]["int8_path"] == "torchao-dynamic"
    for name, rows in report.captions.items():
        assert len(rows) == args.n_images, name
