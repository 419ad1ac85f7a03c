"""Text codecs: the protocol, the codec registry, and Vocabulary as the first implementation."""

from __future__ import annotations

from pathlib import Path

import pytest

from vicap_jobs.data.vocab import BOS_ID, PAD_ID, Vocabulary
from vicap_jobs.errors import UnknownNameError
from vicap_jobs.models.codec import TextCodec, codec_kinds, load_codec


def test_vocabulary_is_a_text_codec(tmp_path: Path) -> None:
    vocab = Vocabulary.build([["một", "cầu", "thủ"]], tokenization="syllable")
    assert isinstance(vocab, TextCodec) and vocab.kind == "vocab"
    assert vocab.banned_ids == (PAD_ID, BOS_ID)  # what the search bans today
    name = vocab.save_codec(tmp_path)
    loaded = load_codec("vocab", tmp_path / name)
    assert isinstance(loaded, Vocabulary) and loaded.tokens == vocab.tokens


def test_unknown_codec_kind_lists_the_valid_ones(tmp_path: Path) -> None:
    assert codec_kinds() == ["hf-tokenizer", "vocab"]
    with pytest.raises(UnknownNameError, match="unknown text codec 'bpe'; choose one of: hf-tokenizer, vocab"):
        load_codec("bpe", tmp_path)
