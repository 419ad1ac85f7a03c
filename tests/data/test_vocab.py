"""Vocabulary building, encoding, decoding and its JSON file (vicap_jobs.data.vocab)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vicap_jobs.data.text import tokenize
from vicap_jobs.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary
from vicap_jobs.errors import InputError, UnknownNameError

UITVIIC_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/uitviic"

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CAPTIONS = [
    ["một", "con", "chó", "đang", "chạy"],
    ["một", "con", "mèo", "đang", "ngủ"],
    ["hai", "con", "chó"],
]


def _captions(split: str) -> list[str]:
    """Raw captions of one UIT-ViIC split, or skip the test when the data set is absent."""
    path = UITVIIC_DIR / f"uitviic_captions_{split}2017.json"
    if not path.is_file():
        pytest.skip(f"UIT-ViIC not found at {path} (shared/ must sit next to the repository root)")
    return [entry["caption"] for entry in json.loads(path.read_text(encoding="utf-8"))["annotations"]]


def test_special_ids_and_deterministic_order() -> None:
    vocab = Vocabulary.build(CAPTIONS, tokenization="syllable")
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    # "con" x3; "chó", "một", "đang" x2 (alphabetical); then the singletons alphabetically.
    assert vocab.tokens[:4] == SPECIALS
    assert vocab.tokens[4:] == ["con", "chó", "một", "đang", "chạy", "hai", "mèo", "ngủ"]
    assert len(vocab) == 12
    assert Vocabulary.build(reversed(CAPTIONS), tokenization="syllable").tokens == vocab.tokens
    assert vocab.tokenization == "syllable"


def test_min_freq_drops_rare_tokens() -> None:
    vocab = Vocabulary.build(CAPTIONS, min_freq=2, tokenization="syllable")
    assert vocab.tokens[4:] == ["con", "chó", "một", "đang"]
    assert "mèo" not in vocab
    assert vocab.encode(["mèo"]) == [BOS_ID, UNK_ID, EOS_ID]
    with pytest.raises(InputError):
        Vocabulary.build(CAPTIONS, min_freq=0, tokenization="syllable")


def test_unknown_tokenization_is_rejected() -> None:
    with pytest.raises(UnknownNameError):
        Vocabulary.build(CAPTIONS, tokenization="bpe")


def test_encode_decode_and_truncation() -> None:
    vocab = Vocabulary.build(CAPTIONS, tokenization="syllable")
    ids = vocab.encode(["một", "con", "cá"])
    assert ids == [BOS_ID, vocab.token_id("một"), vocab.token_id("con"), UNK_ID, EOS_ID]
    assert vocab.decode(ids) == ["một", "con", "<unk>"]
    assert vocab.encode(["một", "con", "cá"], max_len=4) == [BOS_ID, *ids[1:3], EOS_ID]
    assert vocab.encode(["một"], max_len=2) == [BOS_ID, EOS_ID]
    assert vocab.encode(["một"], max_len=10) == [BOS_ID, vocab.token_id("một"), EOS_ID]
    with pytest.raises(InputError):
        vocab.encode(["một"], max_len=1)


def test_decode_skips_bos_and_pad_and_stops_at_eos() -> None:
    vocab = Vocabulary.build(CAPTIONS, tokenization="syllable")
    con = vocab.token_id("con")
    assert vocab.decode([BOS_ID, con, PAD_ID, con, EOS_ID, con, PAD_ID]) == ["con", "con"]
    with pytest.raises(InputError):
        vocab.decode([len(vocab)])


def test_save_load_round_trip(tmp_path: Path) -> None:
    vocab = Vocabulary.build(CAPTIONS, min_freq=1, tokenization="word")
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format_version"] == 1
    assert {"tokenization", "min_freq", "tokens"} <= set(data)
    assert "chó" in path.read_text(encoding="utf-8")  # diacritics stay readable
    loaded = Vocabulary.load(path)
    assert (loaded.tokens, loaded.tokenization, loaded.min_freq) == (vocab.tokens, "word", 1)
    assert loaded.encode(["hai", "con", "cá"]) == vocab.encode(["hai", "con", "cá"])


def _file(**fields: object) -> str:
    """A vocabulary file's text: a valid one with `fields` overridden (None removes the field)."""
    data = {"format_version": 1, "tokenization": "syllable", "min_freq": 1, "tokens": SPECIALS} | fields
    return json.dumps({key: value for key, value in data.items() if value is not None})


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        _file(format_version=2),
        _file(tokens=None),
        _file(tokenization="bpe"),
        _file(min_freq=0),
        _file(tokens=["a", "<bos>", "<eos>", "<unk>"]),
        _file(tokens=[*SPECIALS, "a", "a"]),
    ],
    ids=[
        "not-json",
        "not-object",
        "future-version",
        "no-tokens",
        "bad-tokenization",
        "bad-min-freq",
        "bad-specials",
        "duplicates",
    ],
)
def test_malformed_file_raises_input_error_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broken_vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match="broken_vocab.json"):
        Vocabulary.load(path)


def test_missing_file_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="absent.json"):
        Vocabulary.load(tmp_path / "absent.json")


def test_built_from_train_only_val_only_tokens_are_unknown() -> None:
    train = [tokenize(caption) for caption in _captions("train")]
    val = [tokenize(caption) for caption in _captions("val")]
    vocab = Vocabulary.build(train, tokenization="syllable")
    train_tokens = {token for tokens in train for token in tokens}
    assert set(vocab.tokens[4:]) == train_tokens
    val_only = sorted({token for tokens in val for token in tokens} - train_tokens)
    assert val_only, "expected UIT-ViIC val to contain syllables never seen in train"
    assert vocab.encode(val_only[:1]) == [BOS_ID, UNK_ID, EOS_ID]
    assert all(vocab.token_id(token) == UNK_ID for token in val_only)


def test_codec_protocol_encode_and_decode_captions(tmp_path: Path) -> None:
    vocab = Vocabulary.build([tokenize("Một cầu thủ đá bóng", "syllable")], tokenization="syllable")
    ids = vocab.encode_caption("Một CẦU thủ, đá cầu!")
    assert ids == [BOS_ID, *(vocab.token_id(t) for t in ["một", "cầu", "thủ", "đá", "cầu"]), EOS_ID]
    assert vocab.encode_caption("một cầu thủ đá bóng", max_len=4) == [BOS_ID, ids[1], ids[2], EOS_ID]
    assert vocab.decode_caption([*ids[1:4], EOS_ID, ids[4]]) == "một cầu thủ"  # stops at EOS
    assert vocab.decode_caption([BOS_ID, PAD_ID, ids[1]]) == "một"
    assert (vocab.bos_id, vocab.eos_id, vocab.pad_id, vocab.banned_ids) == (BOS_ID, EOS_ID, PAD_ID, (PAD_ID, BOS_ID))
    assert (
        vocab.save_codec(tmp_path) == "vocab.json" and Vocabulary.load(tmp_path / "vocab.json").tokens == vocab.tokens
    )


def test_decode_caption_detokenizes_words_and_gives_nfc() -> None:
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "bóng_đá")
    vocab = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", decomposed, "sân"], tokenization="word")
    text = vocab.decode_caption([4, 5])
    assert text == "bóng đá sân" and unicodedata.is_normalized("NFC", text)
