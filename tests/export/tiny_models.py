"""Tiny checkpoints of every registered family for engine, export and contract tests.

Models come from ``tests.models.tiny_families`` (built through the family
registry); every one is saved with ``save_checkpoint`` and read back by the code
under test through ``load_checkpoint`` / ``load_engine``, the path users take.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.models.tiny_families import TINY
from vicap_jobs.data.images import preprocess
from vicap_jobs.data.text import tokenize
from vicap_jobs.data.vocab import Vocabulary
from vicap_jobs.export import EXPORTERS
from vicap_jobs.export.quantize import quantize_int8
from vicap_jobs.models.captioner import StepCaptioner
from vicap_jobs.models.checkpoint import save_checkpoint
from vicap_jobs.models.manifest import ModelArtifacts, default_export_dir, read_manifest
from vicap_jobs.models.registry import get_family, resolve

FAMILIES = tuple(TINY)  # the step-wise families built from a vocabulary (the CNN+LSTM ones)
ONNX_FAMILIES = tuple(name for name in FAMILIES if "onnx" in get_family(name).exports)
CAPTIONS = (
    "một cầu thủ đá bóng trên sân cỏ",
    "hai người chơi quần vợt trên sân",
    "vận động viên mặc áo đỏ đang chạy",
    "các cầu thủ bóng rổ tranh bóng",
)


def tiny_vocab() -> Vocabulary:
    """Syllable vocabulary of the fixture captions (about 30 tokens)."""
    return Vocabulary.build([tokenize(text, "syllable") for text in CAPTIONS], tokenization="syllable")


def build_tiny(family: str, *, seed: int = 0, **changes: object) -> StepCaptioner:
    """A random tiny model of ``family`` (its ``TINY`` config with ``changes``), eval mode."""
    return TINY[family].build(len(tiny_vocab()), seed=seed, **changes)


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
            model.output.bias[[vocab.pad_id, vocab.bos_id, vocab.eos_id]] -= 20.0
    return save_checkpoint(
        out_dir, model=model, family=family, codec=vocab, meta={"fixture": "tiny", "trained": trained}
    )


def export_all(checkpoint: Path) -> ModelArtifacts:
    """Run every exporter the checkpoint's family lists, into the default folders; the artifacts engines open.

    The ONNX export also gets its static int8 variant (``export onnx --quantize int8``), calibrated on
    the trained images and a few noise images saved beside the checkpoint, for the int8 engines.
    """
    family = get_family(read_manifest(checkpoint)["family"])
    exports = {}
    for fmt in family.exports:
        exports[fmt] = default_export_dir(checkpoint, fmt)
        resolve(EXPORTERS[fmt])(checkpoint, exports[fmt])
    if "onnx" in exports:
        calibration = checkpoint.parent / f"{checkpoint.name}-calibration"
        calibration.mkdir(exist_ok=True)
        paths = []
        for i, image in enumerate(trained_images() + fixture_images(12, seed=77)):
            paths.append(calibration / f"{i:02d}.png")
            image.save(paths[-1])
        quantize_int8(exports["onnx"], paths, speed_images=4, batch_size=4, threads=1)
    return ModelArtifacts(checkpoint, exports=exports)


def overfit(model: StepCaptioner, vocab: Vocabulary, *, steps: int = 80) -> None:
    """Teacher-force the fixture captions onto ``trained_images()`` until the model has memorized them.

    Runs on one thread: on a shared 2-core machine that is several times faster than two.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _overfit(model, vocab, steps)
    finally:
        torch.set_num_threads(threads)


def _overfit(model: StepCaptioner, vocab: Vocabulary, steps: int) -> None:
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
