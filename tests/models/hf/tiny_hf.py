"""Tiny random Hugging Face models saved with ``save_pretrained``: the local folders the loaders read in tests.

Nothing is downloaded: each function builds a random model from a tiny config and
writes it to ``folder`` exactly as ``hf download`` would leave a real one, so the
families load them through the code users run.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 32
HIDDEN = 32


def tiny_blip(folder: Path, *, image_size: int = IMAGE_SIZE, hidden: int = HIDDEN, seed: int = 0) -> Path:
    """A random BlipForConditionalGeneration (vocab 300, 2 layers each side)."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(seed)
    text = dict(
        vocab_size=300,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        bos_token_id=1,
        sep_token_id=2,
        pad_token_id=0,
        encoder_hidden_size=hidden,
    )
    vision = dict(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        image_size=image_size,
        patch_size=8,
    )
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=hidden))
    model.save_pretrained(str(folder))
    return folder
