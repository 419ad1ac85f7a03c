"""Must-show (slow): a tiny random ViT + GPT-2, trained end to end, sees the synthetic scenes.

Nothing pretrained: a 64 px ViT (patch 8, so an 8×8 grid + CLS) and a 2-layer GPT-2
decoder are drawn at random, written as local folders and trained through
``train_pretrained`` on viic-synth (1,000 images, 700/240/60 split). Greedy captions
from the saved checkpoint (the torch engine) must beat the best constant caption
(chosen on train, scored on test) by >= 10 BLEU-4: the image reaches the text through
the cross-attention this family adds. The numbers are printed (``-s`` to see them).
Budget: about 3 minutes on 2 CPU cores (run with OMP_NUM_THREADS=2).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.models.hf.tiny_vit import tiny_gpt2, tiny_vit
from tests.training.test_must_show import read_split
from vicap_jobs.data.images import load_rgb
from vicap_jobs.data.synth import caption_mentions, generate_synth
from vicap_jobs.engines import DecodeOptions, ModelArtifacts, load_engine
from vicap_jobs.metrics.baseline import choose_blind_baseline, evaluate_constant
from vicap_jobs.metrics.scores import score_captions
from vicap_jobs.training.options import TrainOptions
from vicap_jobs.training.pretrained import train_pretrained

pytestmark = pytest.mark.slow

SYNTH_IMAGES = 1000
IMAGE_SIZE = 64
MIN_GAIN_BLEU4 = 10.0
VAL_IMAGES = 80  # of 240: enough to pick the best epoch, a third of the greedy decoding


def test_a_random_vit_and_decoder_trained_end_to_end_beat_the_blind_baseline(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    generate_synth(root, n_images=SYNTH_IMAGES, seed=0, size=IMAGE_SIZE)
    train, _ = read_split(root, "train")
    val, _ = read_split(root, "val")
    test, attributes = read_split(root, "test")
    options = TrainOptions(
        epochs=4,
        lr=2e-3,
        batch_size=64,
        warmup_steps=10,
        tokenizer_vocab_size=400,
        decode_max_len=24,
        progress_bar=False,
        vision_model=str(tiny_vit(tmp_path / "vit", image_size=IMAGE_SIZE, hidden=64, layers=2)),
        text_model=str(tiny_gpt2(tmp_path / "gpt2", hidden=64, layers=2)),
        tokenizer="train",
    )
    started = time.perf_counter()
    result = train_pretrained(
        family="vit-seq2seq",
        options=options,
        train=train,
        val=val[:VAL_IMAGES],
        out_dir=tmp_path / "checkpoint",
        cache_dir=tmp_path / "cache",
        dataset_key="viic-synth-1000",
    )
    seconds = time.perf_counter() - started

    engine = load_engine("torch", ModelArtifacts(result.out_dir), decode=DecodeOptions(beam_size=1, max_len=24))
    captions = engine.caption([load_rgb(sample.image_path) for sample in test])
    predictions = {sample.image_id: caption for sample, caption in zip(test, captions, strict=True)}
    references = {sample.image_id: list(sample.captions) for sample in test}
    model = score_captions(predictions, references, tokenization="syllable")
    baseline = choose_blind_baseline({s.image_id: list(s.captions) for s in train}, tokenization="syllable")
    blind = evaluate_constant(baseline.caption, references, tokenization="syllable")
    mentions = [caption_mentions(predictions[key], attributes[key]) for key in predictions]
    named = {name: 100.0 * sum(m[name] for m in mentions) / len(mentions) for name in ("sport", "shirt", "players")}
    gain = 100 * (model.bleu_4 - blind.bleu_4)

    print(
        f"\n[vit-seq2seq] {seconds:.0f} s, {len(result.history)} epochs (best {result.best_epoch}), "
        f"val BLEU-4 {100 * result.val_bleu4:.1f}"
    )
    print(f"[vit-seq2seq] test BLEU-4 {100 * model.bleu_4:.1f} vs blind {100 * blind.bleu_4:.1f} (+{gain:.1f})")
    print(
        f"[vit-seq2seq] names sport {named['sport']:.0f}%, shirt colour {named['shirt']:.0f}%, "
        f"player count {named['players']:.0f}% of {len(mentions)} test images; blind: {baseline.caption!r}"
    )
    for key in list(predictions)[:3]:
        print(f"[vit-seq2seq]   {attributes[key]} -> {predictions[key]}")

    assert gain >= MIN_GAIN_BLEU4
