"""Benchmark: test CIDEr-D of cross-entropy (CE) training vs CE then self-critical sequence training (SCST).

The measurement of the must-show test (tests/training/test_scst.py), optionally larger: a
synthetic set (default 1,000 images at 64 px; training on the first 300 train and 100 val
images, testing on all test images), the cnn-lstm family on a frozen random tiny backbone
(features cached), per seed and SCST baseline one run with ``scst_epochs`` (the first one's cross-entropy
checkpoint is copied before SCST starts: that is exactly the CE-only run, training being
deterministic), and (``--long-ce``) a control trained by cross-entropy alone for as many
epochs as CE + SCST (patience off).
Test CIDEr-D of greedy captions, df from the test references (the evaluation's metric).

Usage: python bench/scst.py [--seeds 0,1,2] [--ce-epochs 8] [--scst-epochs 15] [--baselines mean,greedy] [--long-ce]
Writes bench/results/scst.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import write_result  # noqa: E402
from tests.training.test_must_show import greedy_captions, read_split  # noqa: E402

from vicap_jobs.data.samples import CaptionSample  # noqa: E402
from vicap_jobs.data.synth import generate_synth  # noqa: E402
from vicap_jobs.metrics.scores import score_captions  # noqa: E402
from vicap_jobs.training import lstm as lstm_module  # noqa: E402
from vicap_jobs.training.lstm import train_lstm  # noqa: E402
from vicap_jobs.training.options import TrainOptions  # noqa: E402


def test_scores(checkpoint: Path, test: list[CaptionSample], options: TrainOptions) -> dict[str, float]:
    """CIDEr-D, BLEU-4 and ROUGE-L of greedy test captions (CIDEr-D on its own scale, the others 0..1)."""
    predictions = greedy_captions(checkpoint, test, options.decode_max_len)
    references = {sample.image_id: list(sample.captions) for sample in test}
    scores = score_captions(predictions, references, tokenization=options.tokenization)
    return {"cider_d": scores.cider_d or 0.0, "bleu_4": scores.bleu_4, "rouge_l": scores.rouge_l}


def options_for(seed: int, args: argparse.Namespace, baseline: str) -> TrainOptions:
    return TrainOptions(
        epochs=args.ce_epochs,
        image_size=args.size,
        finetune_backbone=False,
        seed=seed,
        scst_epochs=args.scst_epochs,
        scst_samples=args.samples,
        scst_baseline=baseline,  # type: ignore[arg-type]
        scst_lr=args.scst_lr,
        progress_bar=False,
    )


def one_seed(
    seed: int, args: argparse.Namespace, splits: tuple[list[CaptionSample], ...], work: Path
) -> dict[str, Any]:
    """CE (copied from the first SCST run), CE + SCST with each baseline, and the long-CE control, for one seed."""
    train, val, test = splits
    ce_dir = work / f"ce-{seed}"
    real = lstm_module.run_scst
    row: dict[str, Any] = {"seed": seed}
    marks: dict[str, float] = {}

    def copy_then_scst(*a: Any, **k: Any) -> Any:
        if not ce_dir.exists():
            shutil.copytree(k["out_dir"], ce_dir)  # the CE-only result: the best CE epoch, as written
        marks["scst_started"] = time.perf_counter()
        return real(*a, **k)

    for baseline in args.baselines:
        options = options_for(seed, args, baseline)
        started = time.perf_counter()
        lstm_module.run_scst = copy_then_scst  # type: ignore[assignment]
        try:
            result = train_lstm(
                family="cnn-lstm",
                options=options,
                train=train,
                val=val,
                out_dir=work / f"scst-{baseline}-{seed}",
                cache_dir=work / "cache",
                dataset_key="bench-scst",
            )
        finally:
            lstm_module.run_scst = real
        ended = time.perf_counter()
        if "ce" not in row:
            row["ce"] = test_scores(ce_dir, test, options)
        scst_history = [h for h in result.history if h.phase == "scst"]
        row[f"scst_{baseline}"] = {
            **test_scores(result.out_dir, test, options),
            "ce_seconds": marks["scst_started"] - started,
            "scst_seconds": ended - marks["scst_started"],
            "best_epoch": result.best_epoch,
            "ce_epochs_run": len(result.history) - len(scst_history),
            "epochs": [
                {
                    "epoch": h.epoch,
                    "mean_reward": h.mean_reward,
                    "greedy_reward": h.greedy_reward,
                    "val_cider_d": h.val_cider_d,
                }
                for h in scst_history
            ],
        }
    if args.long_ce:
        total = args.ce_epochs + args.scst_epochs
        long_options = TrainOptions(
            epochs=total, image_size=args.size, finetune_backbone=False, seed=seed, patience=total, progress_bar=False
        )
        started = time.perf_counter()
        long = train_lstm(
            family="cnn-lstm",
            options=long_options,
            train=train,
            val=val,
            out_dir=work / f"long-{seed}",
            cache_dir=work / "cache",
            dataset_key="bench-scst",
        )
        row["long_ce"] = {
            **test_scores(long.out_dir, test, long_options),
            "seconds": time.perf_counter() - started,
            "best_epoch": long.best_epoch,
        }
    print(
        f"seed {seed}: test CIDEr-D "
        + ", ".join(f"{group} {row[group]['cider_d']:.4f}" for group in row if group != "seed"),
        flush=True,
    )
    return row


def summary(rows: list[dict[str, Any]], group: str) -> dict[str, float]:
    values = [row[group]["cider_d"] for row in rows]
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "spread": max(values) - min(values),
        "min": min(values),
        "max": max(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="synthetic images generated (split 70/24/6)")
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ce-epochs", type=int, default=8)
    parser.add_argument("--scst-epochs", type=int, default=15)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument(
        "--baselines", type=lambda text: text.split(","), default=["mean", "greedy"], help="comma list: mean,greedy"
    )
    parser.add_argument("--scst-lr", type=float, default=1e-3)
    parser.add_argument("--long-ce", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seeds = [int(seed) for seed in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-scst-") as folder:
        work = Path(folder)
        generate_synth(work / "synth", n_images=args.images, seed=0, size=args.size)
        train, _ = read_split(work / "synth", "train")
        val, _ = read_split(work / "synth", "val")
        test, _ = read_split(work / "synth", "test")
        splits = (train[: args.train_images], val[: args.val_images], test)
        rows = [one_seed(seed, args, splits, work) for seed in seeds]
    groups = ["ce", *(f"scst_{b}" for b in args.baselines), *(["long_ce"] if args.long_ce else [])]
    stats = {group: summary(rows, group) for group in groups}
    main_group = f"scst_{args.baselines[0]}"
    gain = stats[main_group]["mean"] - stats["ce"]["mean"]
    payload = {
        "family": "cnn-lstm",
        "setup": {
            "images_generated": args.images,
            "train_images": len(splits[0]),
            "val_images": len(splits[1]),
            "test_images": len(splits[2]),
            "image_size": args.size,
            "backbone": "tiny, random init, frozen (features cached)",
            "ce_epochs": args.ce_epochs,
            "scst_epochs": args.scst_epochs,
            "scst_samples": args.samples,
            "scst_baselines": args.baselines,
            "scst_lr": args.scst_lr,
            "selection": "best epoch by validation CIDEr-D (CE phase: by validation loss)",
            "threads": torch.get_num_threads(),
        },
        "seeds": seeds,
        "runs": rows,
        "test_cider_d": stats,
        "gain_of": main_group,
        "gain": gain,
        "gain_exceeds_ce_spread": gain > stats["ce"]["spread"],
        "gain_exceeds_both_spreads": gain > max(stats["ce"]["spread"], stats[main_group]["spread"]),
    }
    path = write_result("scst", payload)
    print(f"gain {gain:.4f} vs CE spread {stats['ce']['spread']:.4f}; wrote {path}")


if __name__ == "__main__":
    main()
