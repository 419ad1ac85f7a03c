"""A tiny captioned image set for fast trainer tests: solid colours named in Vietnamese."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vicap_jobs.data.samples import CaptionSample

COLOURS = {"đỏ": (220, 30, 30), "xanh": (30, 60, 220), "vàng": (230, 210, 40), "đen": (20, 20, 20)}


def make_colour_set(folder: Path, n_images: int, *, size: int = 32, seed: int = 0) -> list[CaptionSample]:
    """`n_images` noisy solid-colour PNGs, each with two captions naming its colour."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    samples = []
    for i in range(n_images):
        name = names[i % len(names)]
        pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 15, (size, size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:03d}.png"
        Image.fromarray(pixels).save(path)
        samples.append(CaptionSample(i, path, (f"một bức ảnh màu {name}", f"ảnh nền {name} trơn")))
    return samples


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[CaptionSample], list[CaptionSample]]:
    """40 images: 32 for training, 8 for validation."""
    samples = make_colour_set(tmp_path_factory.mktemp("colours"), 40)
    return samples[:32], samples[32:]
