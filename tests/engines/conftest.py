"""A tiny BLIP trained on the colour set, shared by the int8 engine and engine-choice tests.

Trained like the family contract suite (``tests/models/hf/test_pretrained_contract.py``):
random tiny pretrained folders, ``train_pretrained`` on noisy solid colours, so the
model's greedy captions name the colour with clear logit margins, as a real model's do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models.hf.recipes import blip_inputs, tiny_options
from tests.training.conftest import make_colour_set
from vicap_jobs.data.images import load_rgb
from vicap_jobs.engines import ModelArtifacts
from vicap_jobs.training.pretrained import train_pretrained


@pytest.fixture(scope="session")
def blip_trained(tmp_path_factory: pytest.TempPathFactory) -> ModelArtifacts:
    root = tmp_path_factory.mktemp("blip-int8")
    colours = make_colour_set(root / "colours", 24)
    options = tiny_options(blip_inputs(root / "pretrained"), {}, epochs=12)  # longer: clear logit margins
    result = train_pretrained(
        family="blip",
        options=options,
        train=colours[:20],
        val=colours[20:],
        out_dir=root / "checkpoint",
        cache_dir=root / "cache",
        dataset_key="colours",
    )
    return ModelArtifacts(result.out_dir)


@pytest.fixture(scope="session")
def colour_images(tmp_path_factory: pytest.TempPathFactory) -> list:
    """8 fixed colour images (the fixture every int8 path is compared with fp32 on)."""
    samples = make_colour_set(tmp_path_factory.mktemp("colour-fixture"), 8, seed=7)
    return [load_rgb(Path(sample.image_path)) for sample in samples]
