"""ClipCap must show (slow): a frozen tiny CLIP → prefix → tiny GPT-2 pipeline beats the blind baseline on viic-synth.

The setting is the paper's: CLIP frozen (its embeddings cached once through the
feature cache), an MLP mapper and GPT-2 trained with ``train_pretrained``. No real
CLIP is on this machine, so the test first gives a tiny CLIP what OpenAI's
pretraining gives the real one: it trains a tiny ``CLIPModel`` contrastively on the
synthetic TRAIN images and their captions (~15 s), saves it with ``save_pretrained``
and hands that folder to the family as ``--vision-model`` (the full-CLIPModel,
projected ``image_embeds`` path).

Measured on 2 CPU cores (1,000 images at 64 px; 60 test images, blind BLEU-4 52.3):

- this test (CLIP pretrained 30 epochs in 14 s, ClipCap 12 epochs in 25 s; 45 s in
  all at load 1.2, 90 s with other jobs on the same cores at load 3): +17.8 BLEU-4 over blind (70.1), shirt colour named for
  93 % of test images, player count 65 %; with CLIP pretraining seeds 1 and 2:
  +19.6 and +19.6. With 20 pretraining epochs and 10 ClipCap epochs: +11.6 to +15.1.
- random tiny CLIP trained end to end (``freeze_vision=False``, 64 px, patch 8):
  +4 to +15 BLEU-4 across seeds, learning rates (1e-3..3e-3) and batch sizes in
  80-250 s: the ViT learns the shirt colour in some runs and not in others
  (likely because the colour word is one target in twenty and the random choice
  of caption template dominates its gradient), so it cannot carry a robust check.
- random tiny CLIP, frozen: +9 to +11 after 20-40 epochs: its CLS embedding
  names the sport (100 %) but the shirt colour only ~45 % of the time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from tests.models.hf.tiny_clipcap import tiny_gpt2
from tests.training.test_must_show import greedy_captions, read_split
from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.data.synth import caption_mentions, generate_synth
from vicap_jobs.metrics.baseline import choose_blind_baseline, evaluate_constant
from vicap_jobs.metrics.scores import score_captions
from vicap_jobs.models.clipcap import ClipCapConfig, preprocessing
from vicap_jobs.models.hf_codec import train_caption_tokenizer
from vicap_jobs.training.features import load_pixels
from vicap_jobs.training.options import TrainOptions
from vicap_jobs.training.pretrained import train_pretrained

pytestmark = pytest.mark.slow

SYNTH_IMAGES = 1000
SIZE = 64  # synthetic images and CLIP input
WIDTH = 64  # both CLIP towers and GPT-2
TEXT_LEN = 32  # CLIP text positions


def pretrain_tiny_clip(samples: list[CaptionSample], folder: Path, *, epochs: int = 30, seed: int = 0) -> Path:
    """A tiny CLIPModel trained contrastively on (image, one of its captions) pairs, saved at ``folder``."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    codec = train_caption_tokenizer([c for s in samples for c in s.captions], vocab_size=8000)
    end = len(codec)  # an id of its own ends every text: CLIP pools the text at its first occurrence

    def text_ids(caption: str) -> list[int]:
        ids = [*codec.encode_caption(caption, max_len=TEXT_LEN)[:-1], end]
        return ids + [codec.pad_id] * (TEXT_LEN - len(ids))

    captions = [torch.tensor([text_ids(c) for c in sample.captions]) for sample in samples]  # (n_captions, L) each
    pixels = load_pixels(samples, preprocessing(ClipCapConfig(image_size=SIZE)))  # (N, 3, S, S), as ClipCap sees them
    layers = dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * WIDTH)
    text = dict(layers, vocab_size=end + 1, max_position_embeddings=TEXT_LEN, eos_token_id=end)
    text.update(bos_token_id=codec.bos_id, pad_token_id=codec.pad_id)
    vision = dict(layers, image_size=SIZE, patch_size=8)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=WIDTH))
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-3, weight_decay=0.1)
    batch = 64
    for _ in range(epochs):
        order = torch.randperm(len(samples))
        for start in range(0, len(samples) - batch + 1, batch):
            rows = order[start : start + batch].tolist()
            ids = torch.stack([captions[r][torch.randint(len(captions[r]), ()).item()] for r in rows])  # (B, L)
            out = clip(
                input_ids=ids,
                attention_mask=(ids != codec.pad_id).long(),
                pixel_values=pixels[rows],
                return_loss=True,
            )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
    clip.save_pretrained(str(folder))
    return folder


def test_clipcap_beats_the_blind_baseline_on_the_synthetic_set(tmp_path: Path) -> None:
    started = time.perf_counter()
    root = tmp_path / "synth"
    generate_synth(root, n_images=SYNTH_IMAGES, seed=0, size=SIZE)
    train, _ = read_split(root, "train")
    val, _ = read_split(root, "val")
    test, attributes = read_split(root, "test")
    clip = pretrain_tiny_clip(train, tmp_path / "clip")
    pretrained = time.perf_counter() - started

    options = TrainOptions(
        epochs=12,
        lr=3e-3,
        batch_size=32,
        warmup_steps=50,
        vision_model=str(clip),
        text_model=str(tiny_gpt2(tmp_path / "gpt2", hidden=WIDTH, with_tokenizer=False)),
        decode_max_len=24,
        progress_bar=False,
    )  # clipcap defaults: frozen CLIP (cached embeddings), MLP mapper, prefix of 10, GPT-2 fine-tuned
    result = train_pretrained(
        family="clipcap",
        options=options,
        train=train,
        val=val[:60],  # early stopping only: a quarter of the split keeps each epoch's greedy pass short
        out_dir=tmp_path / "clipcap",
        cache_dir=tmp_path / "cache",
        dataset_key="viic-synth-1000",
    )
    trained = time.perf_counter() - started - pretrained

    predictions = greedy_captions(result.out_dir, test, options.decode_max_len)
    references = {sample.image_id: list(sample.captions) for sample in test}
    model = score_captions(predictions, references, tokenization="syllable")
    baseline = choose_blind_baseline({s.image_id: list(s.captions) for s in train}, tokenization="syllable")
    blind = evaluate_constant(baseline.caption, references, tokenization="syllable")
    mentions = [caption_mentions(predictions[key], attributes[key]) for key in predictions]
    named = {name: 100.0 * sum(m[name] for m in mentions) / len(mentions) for name in ("sport", "shirt", "players")}

    print(
        f"\n[clipcap] CLIP pretraining {pretrained:.0f} s, ClipCap {trained:.0f} s, {len(result.history)} epochs "
        f"(best {result.best_epoch}), val BLEU-4 {100 * result.val_bleu4:.1f}"
    )
    print(
        f"[clipcap] test BLEU-4 {100 * model.bleu_4:.1f} vs blind {100 * blind.bleu_4:.1f} "
        f"(+{100 * (model.bleu_4 - blind.bleu_4):.1f}); names sport {named['sport']:.0f}%, "
        f"shirt colour {named['shirt']:.0f}%, player count {named['players']:.0f}% of {len(mentions)} test images"
    )
    for key in list(predictions)[:3]:
        print(f"[clipcap]   {attributes[key]} -> {predictions[key]}")

    assert len(list((tmp_path / "cache").glob("viic-synth-1000__train__clipcap__*.safetensors"))) == 1
    assert 100 * (model.bleu_4 - blind.bleu_4) >= 10.0
    assert named["shirt"] >= 70.0  # what the image shows, not only the sport a template guesses
