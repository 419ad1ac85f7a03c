"""Tiny CNN+LSTM checkpoints for engine and export tests, built through the family registry.

Every model is saved with ``save_checkpoint`` and read back by the code under
test through ``load_checkpoint`` / ``load_engine``, the path users take.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vicap_jobs.data.text import tokenize
from vicap_jobs.data.vocab import BOS_ID, EOS_ID, PAD_ID, Vocabulary
from vicap_jobs.models.checkpoint import save_checkpoint
from vicap_jobs.models.registry import get_family

FAMILIES = ("cnn-lstm", "cnn-lstm-attn")
IMAGE_SIZE = 32
CAPTIONS = (
    "một cầu thủ đá bóng trên sân cỏ",
    "hai người chơi quần vợt trên sân",
    "vận động viên mặc áo đỏ đang chạy",
    "các cầu thủ bóng rổ tranh bóng",
)


def tiny_vocab() -> Vocabulary:
    """Syllable vocabulary of the fixture captions (about 30 tokens)."""
    return Vocabulary.build([tokenize(text, "syllable") for text in CAPTIONS], tokenization="syllable")


def build_tiny(family: str, *, seed: int = 0, image_size: int = IMAGE_SIZE) -> torch.nn.Module:
    """A random tiny model (``tiny`` backbone, 16-24 wide layers), eval mode."""
    spec = get_family(family)
    extra = {"attention_dim": 16} if family == "cnn-lstm-attn" else {}
    config = spec.config_cls(backbone="tiny", image_size=image_size, embed_dim=16, hidden_dim=24, dropout=0.0, **extra)
    torch.manual_seed(seed)
    return spec.build(config, len(tiny_vocab()), backbone_weights="random").eval()


def fixture_images(n: int, *, seed: int = 0, size: int = 40) -> list[Image.Image]:
    """``n`` RGB noise images (size×size), deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB") for _ in range(n)]


def save_tiny(out_dir: Path, family: str, *, seed: int = 0, trained: bool = False, long: bool = False) -> Path:
    """Save a tiny checkpoint.

    trained: first overfit it on ``trained_images()`` (a second or two), so captions have clear margins.
    long: make <eos>, <pad> and <bos> unlikely, so a random model writes max_len-token captions
    (parity over many steps).
    """
    model = build_tiny(family, seed=seed)
    vocab = tiny_vocab()
    if trained:
        overfit(model, vocab)
    if long:
        with torch.no_grad():
            model.output.bias[[PAD_ID, BOS_ID, EOS_ID]] -= 20.0
    return save_checkpoint(
        out_dir, model=model, family=family, vocab=vocab, meta={"fixture": "tiny", "trained": trained}
    )


def overfit(model: torch.nn.Module, vocab: Vocabulary, *, steps: int = 80) -> None:
    """Teacher-force the fixture captions onto ``trained_images()`` until the model has memorized them.

    Runs on one thread: on a shared 2-core machine that is several times faster than two.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _overfit(model, vocab, steps)
    finally:
        torch.set_num_threads(threads)


def _overfit(model: torch.nn.Module, vocab: Vocabulary, steps: int) -> None:
    from vicap_jobs.data.images import preprocess

    pixels = torch.from_numpy(preprocess(trained_images(), model.config.image_size))
    encoded = [vocab.encode(tokenize(text, "syllable")) for text in CAPTIONS]
    width = max(len(ids) for ids in encoded)
    padded = torch.tensor([ids + [0] * (width - len(ids)) for ids in encoded])  # (B, T + 1)
    tokens_in, targets = padded[:, :-1], padded[:, 1:]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    with torch.no_grad():
        features = model.extract_features(pixels)
    for _ in range(steps):
        logits = model(features, tokens_in)  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def trained_images() -> list[Image.Image]:
    """The images ``overfit`` trained on, in caption order."""
    return fixture_images(len(CAPTIONS), seed=123)
