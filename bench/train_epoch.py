"""Benchmark: one training epoch with teacher forcing vs the seed study's prefix expansion.

Same model (``cnn-lstm``, the TrainOptions dims), same cached frozen features,
same captions (synthetic set), same number of captions per optimizer step.
Teacher forcing scores every position of a caption in one LSTM pass; prefix
expansion turns a caption of n tokens into n samples (prefix -> next token),
each run through the LSTM from the start, as the seed project did. Each scheme
runs in its own process so its peak RSS is its own.

Usage: python bench/train_epoch.py [--images 150] [--epochs 5]
Writes bench/results/train_epoch.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, write_result  # noqa: E402

from vicap_jobs.data.images import Preprocessing
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.data.synth import generate_synth
from vicap_jobs.data.vocab import PAD_ID, Vocabulary
from vicap_jobs.models.registry import get_family
from vicap_jobs.training.batches import collate, encode_captions, tokenize_samples
from vicap_jobs.training.features import extract_features
from vicap_jobs.training.options import TrainOptions


def load_split(root: Path, split: str) -> list[CaptionSample]:
    """CaptionSamples of one split of a generated synthetic set (COCO captions JSON)."""
    coco = json.loads((root / "annotations" / f"captions_{split}.json").read_text(encoding="utf-8"))
    captions: dict[int, list[str]] = {}
    for annotation in coco["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
    return [
        CaptionSample(image["id"], root / "images" / split / image["file_name"], tuple(captions[image["id"]]))
        for image in coco["images"]
    ]


def teacher_forcing_batches(ids: list[list[int]], rows: list[int], batch_size: int):  # noqa: ANN201
    """(image rows, tokens_in (B, T), targets (B, T)) over whole captions."""
    for start in range(0, len(ids), batch_size):
        batch = collate(ids[start : start + batch_size], rows[start : start + batch_size])
        yield batch.image_row, batch.tokens_in, batch.targets


def prefix_batches(ids: list[list[int]], rows: list[int], batch_size: int):  # noqa: ANN201
    """Seed scheme: every (prefix -> next token) pair is a sample; only the last position is scored."""
    samples = [(row, seq[:k], seq[k]) for seq, row in zip(ids, rows, strict=True) for k in range(1, len(seq))]
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        longest = max(len(prefix) for _, prefix, _ in chunk)
        tokens = torch.full((len(chunk), longest), PAD_ID, dtype=torch.long)  # (B, T)
        targets = torch.full((len(chunk), longest), PAD_ID, dtype=torch.long)  # (B, T)
        for i, (_, prefix, nxt) in enumerate(chunk):
            tokens[i, : len(prefix)] = torch.as_tensor(prefix)
            targets[i, len(prefix) - 1] = nxt  # score only the prediction after the whole prefix
        yield torch.as_tensor([row for row, _, _ in chunk]), tokens, targets


def run_scheme(scheme: str, data_dir: str, n_epochs: int, queue: mp.Queue) -> None:
    """Child process: build everything, train `n_epochs` epochs, report timings and peak RSS."""
    torch.manual_seed(0)
    options = TrainOptions(finetune_backbone=False)
    train = load_split(Path(data_dir), "train")
    tokens = tokenize_samples(train, options.tokenization)
    vocab = Vocabulary.build((t for caps in tokens for t in caps), tokenization=options.tokenization)
    encoded = encode_captions(tokens, vocab, max_len=options.max_len)
    spec = get_family("cnn-lstm")
    fields = {
        "vocab_size": len(vocab),
        "backbone": options.backbone,
        "image_size": options.image_size,
        "finetune_backbone": False,
    }
    for name in ("embed_dim", "hidden_dim", "dropout"):
        if getattr(options, name) is not None:
            fields[name] = getattr(options, name)
    model = spec.build(spec.config_cls(**fields), backbone_weights="random")
    model.eval()
    features = extract_features(
        model.extract_features, train, preprocessing=Preprocessing(options.image_size), progress=False
    ).float()  # (N, C, h, w)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.lr)
    make_batches = teacher_forcing_batches if scheme == "teacher_forcing" else prefix_batches
    batch_size = 64
    epoch_seconds: list[float] = []
    steps = 0
    for _ in range(n_epochs + 1):  # the first epoch warms up allocators and is not timed
        model.train()
        started = time.perf_counter()
        steps = 0
        for rows, tokens_in, targets in make_batches(encoded.ids, encoded.image_row, batch_size):
            logits = model(features.index_select(0, rows), tokens_in)  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD_ID)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        epoch_seconds.append(time.perf_counter() - started)
    epoch_seconds = epoch_seconds[1:]
    queue.put(
        {
            "scheme": scheme,
            "captions": len(encoded.ids),
            "samples_per_epoch": len(encoded.ids)
            if scheme == "teacher_forcing"
            else sum(len(seq) - 1 for seq in encoded.ids),
            "steps_per_epoch": steps,
            "batch_size": batch_size,
            "epoch_seconds": epoch_seconds,
            "seconds_per_epoch": statistics.median(epoch_seconds),
            "fastest_epoch_seconds": min(epoch_seconds),
            "peak_rss_mib": peak_rss_mb(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=150, help="synthetic images generated (70%% go to train)")
    parser.add_argument(
        "--epochs", type=int, default=5, help="timed epochs per scheme, after one warm-up (median reported)"
    )
    args = parser.parse_args()
    context = mp.get_context("spawn")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        generate_synth(Path(data_dir), n_images=args.images, seed=0, size=TrainOptions().image_size)
        for scheme in ("teacher_forcing", "prefix_expansion"):
            queue: mp.Queue = context.Queue()
            process = context.Process(target=run_scheme, args=(scheme, data_dir, args.epochs, queue))
            process.start()
            results[scheme] = queue.get()
            process.join()
    ratio = results["prefix_expansion"]["seconds_per_epoch"] / results["teacher_forcing"]["seconds_per_epoch"]
    fastest_ratio = (
        results["prefix_expansion"]["fastest_epoch_seconds"] / results["teacher_forcing"]["fastest_epoch_seconds"]
    )
    path = write_result(
        "train_epoch",
        {
            "family": "cnn-lstm",
            "note": "frozen tiny-backbone features; decoder training only; same captions, batch 64 samples",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            **results,
            "prefix_over_teacher_forcing": ratio,
            "prefix_over_teacher_forcing_fastest": fastest_ratio,
            "load_average_1min": os.getloadavg()[0],
        },
    )
    for scheme in ("teacher_forcing", "prefix_expansion"):
        r = results[scheme]
        print(
            f"{scheme:17s} {r['seconds_per_epoch']:7.2f} s/epoch  {r['samples_per_epoch']:6d} samples  "
            f"{r['steps_per_epoch']:4d} steps  peak RSS {r['peak_rss_mib']:.0f} MiB"
        )
    print(
        f"prefix expansion / teacher forcing: {ratio:.1f}x median, {fastest_ratio:.1f}x fastest epochs "
        f"(1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores) -> {path}"
    )


if __name__ == "__main__":
    main()
