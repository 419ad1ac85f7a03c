"""Tiny random folders for the ``vit-seq2seq`` family: a ViT encoder, GPT-2 and mBART (BARTpho's architecture) decoders.

Each builder writes ``save_pretrained`` output as ``hf download`` would leave a real
model, so the family loads them through the code users run. The 32-wide GPT-2
carries its own tokenizer (a byte-level BPE whose length is the decoder's vocabulary)
so the "text model's own tokenizer" path is exercised; the 48-wide one makes
``VisionEncoderDecoderModel`` add ``enc_to_dec_proj`` in front of a 32-wide encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vicap_jobs.models.hf_codec import HFTokenizerCodec, train_caption_tokenizer

IMAGE_SIZE = 32
HIDDEN = 32
VOCAB = 300
# Text the tiny tokenizer is learned from: the colour set's captions and a few more Vietnamese words.
CAPTIONS = [
    *(f"một bức ảnh màu {name}" for name in ("đỏ", "xanh", "vàng", "đen")),
    *(f"ảnh nền {name} trơn" for name in ("đỏ", "xanh", "vàng", "đen")),
    "những cầu thủ đá bóng ở sân vận động",
    "một người đàn ông đang chơi quần vợt",
] * 3


def tiny_vit(
    folder: Path,
    *,
    image_size: int = IMAGE_SIZE,
    hidden: int = HIDDEN,
    patch: int = 8,
    layers: int = 2,
    processor: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A random ViTModel; ``processor``: a preprocessor_config.json to write beside it."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        image_size=image_size,
        patch_size=patch,
    )
    ViTModel(config).save_pretrained(str(folder))
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return folder


def tiny_tokenizer() -> HFTokenizerCodec:
    """A byte-level BPE (≤ 300 ids) learned on CAPTIONS: ids 0-3 are <pad>, <s>, </s>, <unk>."""
    return train_caption_tokenizer(CAPTIONS, vocab_size=VOCAB)


def tiny_gpt2(
    folder: Path, *, hidden: int = HIDDEN, layers: int = 2, with_tokenizer: bool = False, seed: int = 0
) -> Path:
    """A random GPT2LMHeadModel (vocab 300, or the tokenizer's length when it carries one)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    codec = tiny_tokenizer() if with_tokenizer else None
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(codec) if codec is not None else VOCAB,
        n_embd=hidden,
        n_layer=layers,
        n_head=2,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    if codec is not None:
        codec.tokenizer.save_pretrained(str(folder))
    return folder


def tiny_mbart(
    folder: Path, *, d_model: int = HIDDEN, with_tokenizer: bool = False, logits_bias: bool = False, seed: int = 0
) -> Path:
    """A random MBartForConditionalGeneration (BARTpho's architecture), vocab 300, 2 layers each side.

    logits_bias: a non-zero ``final_logits_bias`` (BART checkpoints keep zeros there).
    """
    from transformers import MBartConfig, MBartForConditionalGeneration

    codec = tiny_tokenizer() if with_tokenizer else None
    torch.manual_seed(seed)
    config = MBartConfig(
        vocab_size=len(codec) if codec is not None else VOCAB,
        d_model=d_model,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    model = MBartForConditionalGeneration(config)
    if logits_bias:
        with torch.no_grad():
            model.final_logits_bias.normal_()
    model.save_pretrained(str(folder))
    if codec is not None:
        codec.tokenizer.save_pretrained(str(folder))
    return folder


def vit_seq2seq_inputs(folder: Path) -> dict[str, Any]:
    """The contract recipe: a ViT, GPT-2 with its own tokenizer (default), a 48-wide GPT-2 and an mBART."""
    tiny_gpt2(folder / "gpt2-wide", hidden=48)
    tiny_mbart(folder / "mbart")
    return {
        "vision_model": str(tiny_vit(folder / "vit")),
        "text_model": str(tiny_gpt2(folder / "gpt2", with_tokenizer=True)),
    }
