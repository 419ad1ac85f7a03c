"""The Hugging Face text codec: the trained byte-level BPE keeps every diacritic; supplied tokenizers are checked.

The UIT-ViIC test is the measurement behind the default (``models/hf_codec.py``):
a byte-level BPE (NFC + lowercase) learned on the TRAIN captions round-trips every
caption of all three splits, while a WordPiece loses text either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import UITVIIC_FILES
from vicap_jobs.data.text import normalize
from vicap_jobs.errors import InputError, WeightsMissingError
from vicap_jobs.models.codec import load_codec
from vicap_jobs.models.hf_codec import (
    HFTokenizerCodec,
    check_keeps_text,
    load_tokenizer,
    special_ids,
    train_caption_tokenizer,
)

CAPTIONS = [
    "Một cầu thủ đang đá bóng trên sân cỏ.",
    "Hai người chơi quần vợt ở sân vận động",
    "Vận động viên mặc áo đỏ đang chạy!",
    "các cầu thủ bóng rổ tranh bóng",
]


def uitviic_captions(folder: Path, split: str) -> list[str]:
    data = json.loads((folder / UITVIIC_FILES[split]).read_text(encoding="utf-8"))
    return [annotation["caption"] for annotation in data["annotations"]]


def test_bpe_trained_on_uitviic_train_round_trips_every_caption_of_every_split(uitviic_dir: Path) -> None:
    train = uitviic_captions(uitviic_dir, "train")
    codec = train_caption_tokenizer(train)
    every = [caption for split in ("train", "val", "test") for caption in uitviic_captions(uitviic_dir, split)]
    assert len(every) == 19_256
    lost = [caption for caption in every if not codec.round_trips(caption)]
    assert lost == []
    unk = codec.tokenizer.unk_token_id
    assert all(unk not in codec.encode_text(caption) for caption in every)
    assert codec.round_trips("Mỹ Tho, Quảng Ngãi và Đà Nẵng")  # characters train may not hold


def test_wordpiece_loses_vietnamese_text_which_is_why_it_is_not_the_default(uitviic_dir: Path) -> None:
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    train = [normalize(caption) for caption in uitviic_captions(uitviic_dir, "train")]
    for strip_accents in (None, False):
        wordpiece = BertWordPieceTokenizer(lowercase=True, strip_accents=strip_accents)
        wordpiece.train_from_iterator(train, vocab_size=4000, show_progress=False)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=wordpiece._tokenizer,
            unk_token="[UNK]",
            sep_token="[SEP]",
            cls_token="[CLS]",
            pad_token="[PAD]",
        )
        codec = HFTokenizerCodec(fast)
        assert not codec.round_trips("mỹ tho")  # accents stripped (default) or an unseen letter → [UNK]
        with pytest.raises(InputError, match="does not keep"):
            check_keeps_text(codec, ["hình ảnh mỹ tho"] * 3, source="bert-like")


def test_encode_wraps_in_bos_eos_and_cuts_keeping_eos_last() -> None:
    codec = train_caption_tokenizer(CAPTIONS * 5, vocab_size=400)
    ids = codec.encode_caption(CAPTIONS[0])
    assert ids[0] == codec.bos_id and ids[-1] == codec.eos_id and len(ids) > 4
    cut = codec.encode_caption(CAPTIONS[0], max_len=4)
    assert cut == [codec.bos_id, *ids[1:3], codec.eos_id]
    with pytest.raises(InputError, match="max_len"):
        codec.encode_caption(CAPTIONS[0], max_len=1)


def test_decode_stops_at_eos_drops_specials_and_normalizes() -> None:
    codec = train_caption_tokenizer(CAPTIONS * 5, vocab_size=400)
    text_ids = codec.encode_text("cầu thủ đá bóng")
    assert codec.decode_caption([*text_ids, codec.eos_id, *codec.encode_text("rác")]) == "cầu thủ đá bóng"
    assert codec.decode_caption([codec.pad_id, *text_ids]) == "cầu thủ đá bóng"
    assert codec.decode_caption(codec.encode_text("CẦU  Thủ!")) == "cầu thủ"


def test_special_ids_of_a_trained_tokenizer_and_extra_specials() -> None:
    codec = train_caption_tokenizer(CAPTIONS * 5, vocab_size=400, extra_special=["<image>"])
    image = codec.tokenizer.convert_tokens_to_ids("<image>")
    assert (codec.pad_id, codec.bos_id, codec.eos_id) == (0, 1, 2)
    assert set(codec.banned_ids) == {0, 1, 3, image} and codec.eos_id not in codec.banned_ids


def test_a_gpt2_style_tokenizer_pads_with_eos_and_starts_with_it() -> None:
    from transformers import PreTrainedTokenizerFast

    base = train_caption_tokenizer(CAPTIONS * 5, vocab_size=400)
    gpt2_like = PreTrainedTokenizerFast(
        tokenizer_object=base.tokenizer.backend_tokenizer, bos_token="</s>", eos_token="</s>"
    )
    ids = special_ids(gpt2_like)
    assert ids.bos_id == ids.eos_id == ids.pad_id == 2
    assert 2 not in ids.banned_ids


def test_save_and_load_give_the_same_ids(tmp_path: Path) -> None:
    codec = train_caption_tokenizer(CAPTIONS * 5, vocab_size=400, extra_special=["<image>"])
    name = codec.save_codec(tmp_path)
    loaded = load_codec("hf-tokenizer", tmp_path / name)
    assert isinstance(loaded, HFTokenizerCodec)
    assert loaded.ids == codec.ids and len(loaded) == len(codec)
    for caption in CAPTIONS:
        assert loaded.encode_caption(caption) == codec.encode_caption(caption)


def test_malformed_ids_file_and_missing_folder_are_one_line(tmp_path: Path) -> None:
    codec = train_caption_tokenizer(CAPTIONS * 5, vocab_size=400)
    folder = tmp_path / codec.save_codec(tmp_path)
    (folder / "vicap_codec.json").write_text('{"bos_id": 1}', encoding="utf-8")
    with pytest.raises(InputError, match="malformed"):
        HFTokenizerCodec.load(folder)
    with pytest.raises(WeightsMissingError) as info:
        load_tokenizer(tmp_path / "nowhere")
    assert "\n" not in str(info.value) and "--tokenizer train" in str(info.value)


def test_a_tokenizer_that_loses_under_one_percent_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True, strip_accents=False)
    wordpiece.train_from_iterator([normalize(c) for c in CAPTIONS] * 5, vocab_size=400, show_progress=False)
    codec = HFTokenizerCodec(
        PreTrainedTokenizerFast(tokenizer_object=wordpiece._tokenizer, unk_token="[UNK]", sep_token="[SEP]")
    )
    kept = CAPTIONS * 50  # 200 captions it keeps
    assert check_keeps_text(codec, kept, source="wp") == 0 and not caplog.records
    assert check_keeps_text(codec, [*kept, "cầu thủ ở mỹ"], source="wp") == 1  # 1 of 201 lost: warned
    assert "does not keep 1 of 201" in caplog.text and "training anyway" in caplog.text
    with pytest.raises(InputError, match="does not keep 3 of 203"):
        check_keeps_text(codec, [*kept, *["cầu thủ ở mỹ"] * 3], source="wp")


def test_trained_tokenizer_inputs_are_checked() -> None:
    with pytest.raises(InputError, match="vocab_size must be at least 300"):
        train_caption_tokenizer(CAPTIONS, vocab_size=100)
    with pytest.raises(InputError, match="no train caption"):
        train_caption_tokenizer(["!!!", "..."], vocab_size=300)
