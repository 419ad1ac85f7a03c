"""Must-show (slow): both CNN+LSTM families, trained with the DEFAULT TrainOptions, beat the blind baseline.

On the synthetic sports set (1,000 images at 96 px, 700/240/60 split) a model
trained for a couple of minutes on CPU must beat the best constant caption
(chosen on train, scored on test) by >= 15 BLEU-4 and >= 5 ROUGE-L points, and
its greedy captions must name the true sport, shirt colour and player count of
most test images. The numbers are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from vicap_jobs.data.formats import read_coco_captions
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.data.synth import caption_mentions, generate_synth
from vicap_jobs.metrics.baseline import choose_blind_baseline, evaluate_constant
from vicap_jobs.metrics.scores import score_captions
from vicap_jobs.models.checkpoint import load_checkpoint
from vicap_jobs.models.decoding import greedy_decode
from vicap_jobs.training.features import load_pixels
from vicap_jobs.training.lstm import train_lstm
from vicap_jobs.training.options import TrainOptions

pytestmark = pytest.mark.slow

SYNTH_IMAGES = 1000
SYNTH_SIZE = 96


@dataclasses.dataclass(frozen=True)
class SynthSplits:
    train: list[CaptionSample]
    val: list[CaptionSample]
    test: list[CaptionSample]
    test_attributes: dict[int, dict[str, Any]]


def read_split(root: Path, split: str) -> tuple[list[CaptionSample], dict[int, dict[str, Any]]]:
    """Samples of one generated split, and each image's true scene attributes."""
    annotations = root / "annotations" / f"captions_{split}.json"
    parsed = read_coco_captions(annotations)
    samples = [
        CaptionSample(
            image.coco_id or 0, root / "images" / split / image.file_name, tuple(text for text, _ in image.captions)
        )
        for image in parsed.images
    ]
    coco = json.loads(annotations.read_text(encoding="utf-8"))
    return samples, {image["id"]: image["attributes"] for image in coco["images"]}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSplits:
    """One synthetic set shared by the family tests."""
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, n_images=SYNTH_IMAGES, seed=0, size=SYNTH_SIZE)
    train, _ = read_split(root, "train")
    val, _ = read_split(root, "val")
    test, attributes = read_split(root, "test")
    return SynthSplits(train, val, test, attributes)


@torch.no_grad()
def greedy_captions(checkpoint: Path, samples: list[CaptionSample], max_len: int) -> dict[int, str]:
    """Greedy captions of `samples` from a saved checkpoint (as an engine would produce them)."""
    loaded = load_checkpoint(checkpoint)
    model, codec = loaded.model, loaded.codec
    features = model.extract_features(load_pixels(samples, loaded.preprocessing))  # (N, C, h, w)
    sequences = greedy_decode(
        model.step,
        model.start(features),
        batch_size=len(samples),
        bos_id=codec.bos_id,
        eos_id=codec.eos_id,
        max_len=max_len,
    )
    return {sample.image_id: codec.decode_caption(ids) for sample, ids in zip(samples, sequences, strict=True)}


@pytest.mark.parametrize("family", ["cnn-lstm", "cnn-lstm-attn"])
def test_family_beats_blind_baseline_and_names_what_it_sees(family: str, synth: SynthSplits, tmp_path: Path) -> None:
    options = dataclasses.replace(TrainOptions(), progress_bar=False)  # the tuned defaults the demo uses
    started = time.perf_counter()
    result = train_lstm(
        family=family,
        options=options,
        train=synth.train,
        val=synth.val,
        out_dir=tmp_path / family,
        cache_dir=tmp_path / "cache",
        dataset_key="viic-synth-1000",
    )
    seconds = time.perf_counter() - started

    predictions = greedy_captions(result.out_dir, synth.test, options.decode_max_len)
    references = {sample.image_id: list(sample.captions) for sample in synth.test}
    model = score_captions(predictions, references, tokenization=options.tokenization)
    baseline = choose_blind_baseline(
        {s.image_id: list(s.captions) for s in synth.train}, tokenization=options.tokenization
    )
    blind = evaluate_constant(baseline.caption, references, tokenization=options.tokenization)
    mentions = [caption_mentions(predictions[key], synth.test_attributes[key]) for key in predictions]
    named = {name: 100.0 * sum(m[name] for m in mentions) / len(mentions) for name in ("sport", "shirt", "players")}

    print(
        f"\n[{family}] {seconds:.0f} s, {len(result.history)} epochs (best {result.best_epoch}), "
        f"val BLEU-4 {100 * result.val_bleu4:.1f}"
    )
    print(
        f"[{family}] test BLEU-4 {100 * model.bleu_4:.1f} vs blind {100 * blind.bleu_4:.1f} "
        f"(+{100 * (model.bleu_4 - blind.bleu_4):.1f}); ROUGE-L {100 * model.rouge_l:.1f} vs blind "
        f"{100 * blind.rouge_l:.1f} (+{100 * (model.rouge_l - blind.rouge_l):.1f})"
    )
    print(
        f"[{family}] names sport {named['sport']:.0f}%, shirt colour {named['shirt']:.0f}%, "
        f"player count {named['players']:.0f}% of {len(mentions)} test images; blind: {baseline.caption!r}"
    )
    for key in list(predictions)[:3]:
        print(f"[{family}]   {synth.test_attributes[key]} -> {predictions[key]}")

    assert 100 * (model.bleu_4 - blind.bleu_4) >= 15.0
    assert 100 * (model.rouge_l - blind.rouge_l) >= 5.0
    assert named["sport"] >= 90.0
    assert named["shirt"] >= 85.0
    assert named["players"] >= 60.0


def test_densenet201_random_init_trains_saves_and_loads(tmp_path: Path) -> None:
    """A real torchvision backbone end to end (frozen, features cached): no quality claim."""
    root = tmp_path / "synth"
    generate_synth(root, n_images=60, seed=1, size=64)
    train, _ = read_split(root, "train")
    val, _ = read_split(root, "val")
    options = TrainOptions(
        epochs=1,
        batch_size=8,
        image_size=64,
        backbone="densenet201",
        backbone_weights="random",
        finetune_backbone=False,
        embed_dim=32,
        hidden_dim=64,
        attention_dim=32,
        decode_max_len=8,
        progress_bar=False,
    )
    started = time.perf_counter()
    result = train_lstm(
        family="cnn-lstm-attn",
        options=options,
        train=train,
        val=val,
        out_dir=tmp_path / "ckpt",
        cache_dir=tmp_path / "cache",
        dataset_key="viic-synth-60",
    )
    print(f"\n[densenet201] train -> checkpoint in {time.perf_counter() - started:.0f} s")
    loaded = load_checkpoint(result.out_dir)
    assert loaded.manifest["backbone"] == "densenet201" and loaded.manifest["image_size"] == 64
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    captions = greedy_captions(result.out_dir, val[:2], 8)
    assert len(captions) == 2 and all(isinstance(text, str) for text in captions.values())
