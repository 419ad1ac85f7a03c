"""Tiny random CLIP and GPT-2 folders (``save_pretrained``) for the clipcap family's tests.

The GPT-2 folder also holds a GPT-2-style tokenizer, as a Vietnamese GPT-2 on the hub
does: a byte-level BPE learned on a few Vietnamese captions, whose only special token
is ``<|endoftext|>`` (BOS = EOS = UNK, no pad). The model's vocabulary is that
tokenizer's length, so the family's "own tokenizer" path keeps its embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.models.hf.tiny_hf import HIDDEN, IMAGE_SIZE

END_OF_TEXT = "<|endoftext|>"
TOKENIZER_CAPTIONS = (
    "một bức ảnh màu đỏ",
    "ảnh nền đỏ trơn",
    "một bức ảnh màu xanh",
    "ảnh nền xanh trơn",
    "một bức ảnh màu vàng",
    "ảnh nền vàng trơn",
    "một bức ảnh màu đen",
    "ảnh nền đen trơn",
    "những cầu thủ đang đá bóng trên sân",
)


def _vision_config(image_size: int, hidden: int, layers: int, patch: int) -> dict[str, Any]:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        image_size=image_size,
        patch_size=patch,
    )


def tiny_clip_vision(
    folder: Path, *, image_size: int = IMAGE_SIZE, hidden: int = HIDDEN, layers: int = 2, patch: int = 8, seed: int = 0
) -> Path:
    """A random CLIPVisionModel (hidden 32, 2 layers, 32 px, patch 8 by default)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(**_vision_config(image_size, hidden, layers, patch))).save_pretrained(str(folder))
    return folder


def tiny_clip_model(folder: Path, *, projection_dim: int = 24, seed: int = 0) -> Path:
    """A random full CLIPModel (both towers, projection 24 wide): the paper's image_embeds path."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = dict(
        vocab_size=100,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = _vision_config(IMAGE_SIZE, HIDDEN, 2, 8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
    model.save_pretrained(str(folder))
    return folder


def gpt2_style_tokenizer(captions: tuple[str, ...] = TOKENIZER_CAPTIONS, vocab_size: int = 300) -> Any:
    """A byte-level BPE like GPT-2's: ``<|endoftext|>`` is BOS, EOS and UNK; no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(captions) * 3, trainer=trainer)
    return GPT2Tokenizer(
        tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT
    )


def tiny_gpt2(
    folder: Path,
    *,
    hidden: int = HIDDEN,
    layers: int = 2,
    n_positions: int = 64,
    with_tokenizer: bool = True,
    seed: int = 0,
) -> Path:
    """A random GPT2LMHeadModel (n_embd 32, 2 layers, 64 positions) with its own tokenizer saved beside it.

    Without a tokenizer the vocabulary is 300 ids and the family must train one.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tokenizer = gpt2_style_tokenizer() if with_tokenizer else None
    end = tokenizer.eos_token_id if tokenizer is not None else 0
    config = GPT2Config(
        vocab_size=len(tokenizer) if tokenizer is not None else 300,
        n_embd=hidden,
        n_layer=layers,
        n_head=2,
        n_positions=n_positions,
        bos_token_id=end,
        eos_token_id=end,
    )
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
