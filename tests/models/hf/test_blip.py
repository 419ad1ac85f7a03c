"""BLIP-specific behaviour: which pretrained embedding rows survive a new tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.models.hf.tiny_hf import tiny_blip
from vicap_jobs.models.blip import BlipCaptionConfig, build
from vicap_jobs.models.hf_codec import HFTokenizerCodec, load_tokenizer, train_caption_tokenizer

CAPTIONS = ["một cầu thủ đá bóng trên sân cỏ", "hai người chơi quần vợt", "vận động viên mặc áo đỏ"] * 20


def base_rows(folder: Path) -> torch.Tensor:
    from transformers import BlipForConditionalGeneration

    model = BlipForConditionalGeneration.from_pretrained(str(folder), local_files_only=True)
    return model.text_decoder.get_input_embeddings().weight.detach().clone()


def test_the_base_tokenizer_keeps_its_rows_and_another_vocabulary_of_the_same_size_is_redrawn(tmp_path: Path) -> None:
    folder = tiny_blip(tmp_path / "blip")
    own = train_caption_tokenizer(CAPTIONS, vocab_size=300)
    own.tokenizer.save_pretrained(str(folder))  # the base folder ships this tokenizer
    pretrained = base_rows(folder)
    assert len(own) == pretrained.shape[0] == 300

    kept = build(BlipCaptionConfig(base_model=str(folder)), codec=HFTokenizerCodec(load_tokenizer(folder)))
    torch.testing.assert_close(kept.hf.text_decoder.get_input_embeddings().weight, pretrained)

    other = train_caption_tokenizer([c.upper() + " khác" for c in CAPTIONS], vocab_size=300)
    assert len(other) == 300 and other.tokenizer.get_vocab() != own.tokenizer.get_vocab()
    redrawn = build(BlipCaptionConfig(base_model=str(folder)), codec=other)
    rows = redrawn.hf.text_decoder.get_input_embeddings().weight
    assert not torch.allclose(rows, pretrained)
    assert redrawn.hf.text_decoder.get_output_embeddings().weight is rows  # still tied
    assert redrawn.config.image_size == 32 and redrawn.config.base_model == str(folder.resolve())
