"""Normalization and tokenization of Vietnamese captions (vicap_jobs.data.text)."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vicap_jobs.data.text import TOKENIZATIONS, check_tokenization, detokenize, normalize, tokenize
from vicap_jobs.errors import UnknownNameError

REPO_ROOT = Path(__file__).resolve().parents[2]

TONED_VOWELS = "àáảãạ ăằắẳẵặ âầấẩẫậ đ èéẻẽẹ êềếểễệ ìíỉĩị òóỏõọ ôồốổỗộ ơờớởỡợ ùúủũụ ưừứửữự ỳýỷỹỵ"


def test_normalize_example() -> None:
    assert normalize("Một cậu bé đang chơi bóng đá.") == "một cậu bé đang chơi bóng đá"


def test_nfd_input_gives_identical_nfc_output() -> None:
    text = "Một cậu bé đang chơi bóng đá."
    decomposed = unicodedata.normalize("NFD", text)
    assert decomposed != text
    result = normalize(decomposed)
    assert result == normalize(text)
    assert unicodedata.is_normalized("NFC", result)


def test_diacritics_preserved_and_lowercased() -> None:
    assert normalize(TONED_VOWELS.upper()) == TONED_VOWELS
    assert normalize(unicodedata.normalize("NFD", TONED_VOWELS.upper())) == TONED_VOWELS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('Chú chó, "màu nâu"; đang chạy!?', "chú chó màu nâu đang chạy"),
        ("(hai) [con] {mèo} … – — / \\ ` ~ @ # $ % ^ & * + = < > |", "hai con mèo"),
        ("«Xe-máy» “đỏ” ở phố_cổ 😀 ©", "xe máy đỏ ở phố cổ"),
        ("  nhiều\tkhoảng \n trắng  ", "nhiều khoảng trắng"),
        ("2 người và 10 con chó.", "2 người và 10 con chó"),
        ("...!!!", ""),
    ],
)
def test_punctuation_and_symbols_become_spaces(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_normalize_never_outputs_underscore_and_is_idempotent() -> None:
    result = normalize("bóng_đá __ cầu_thủ")
    assert "_" not in result
    assert normalize(result) == result == "bóng đá cầu thủ"


def test_syllable_tokenization_splits_on_spaces() -> None:
    assert tokenize("Một cậu bé đang chơi bóng đá.") == ["một", "cậu", "bé", "đang", "chơi", "bóng", "đá"]
    assert tokenize("  ?! ") == []


def test_word_tokenization_joins_words_and_round_trips() -> None:
    text = "Cầu thủ đá bóng đá"
    words = tokenize(text, "word")
    assert any("_" in word for word in words), words
    assert "bóng_đá" in words
    assert detokenize(words) == normalize(text)
    assert tokenize(unicodedata.normalize("NFD", text), "word") == words
    assert tokenize("", "word") == []


def test_word_tokenization_keeps_marks_pyvi_would_split() -> None:
    # "x" + combining acute has no precomposed form; pyvi's regex would cut the mark off the letter.
    text = "x\u0301 bóng đá"
    assert normalize(text) == text
    words = tokenize(text, "word")
    assert detokenize(words) == text
    assert words[0] == "x\u0301"


def test_detokenize_turns_underscores_into_spaces() -> None:
    assert detokenize(["bóng_đá"]) == "bóng đá"
    assert detokenize(["cầu_thủ", "đá", "bóng_đá"]) == "cầu thủ đá bóng đá"
    assert detokenize([]) == ""


def test_unknown_tokenization_lists_valid_names() -> None:
    assert [check_tokenization(name) for name in TOKENIZATIONS] == ["syllable", "word"]
    with pytest.raises(UnknownNameError) as caught:
        check_tokenization("character")
    assert str(caught.value) == "unknown tokenization 'character'; choose one of: syllable, word"
    with pytest.raises(UnknownNameError):
        tokenize("xin chào", "bpe")  # type: ignore[arg-type]


def test_text_is_the_only_module_importing_pyvi() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+pyvi\b", re.MULTILINE)
    importers = [
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "src").rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert importers == ["src/vicap_jobs/data/text.py"]


def test_word_tokenization_round_trips_on_uitviic_test(uitviic_dir: Path) -> None:
    path = uitviic_dir / "uitviic_captions_test2017.json"
    captions = [entry["caption"] for entry in json.loads(path.read_text(encoding="utf-8"))["annotations"]]
    joined = 0
    for caption in captions:
        words = tokenize(caption, "word")
        assert detokenize(words) == normalize(caption)
        joined += any("_" in word for word in words)
    assert joined > len(captions) // 2  # pyvi really joins multi-syllable words in most captions


# --------------------------------------------------------------------------- properties

ONSETS = (
    "",
    "b",
    "c",
    "ch",
    "d",
    "đ",
    "g",
    "gi",
    "h",
    "kh",
    "l",
    "m",
    "n",
    "ng",
    "nh",
    "ph",
    "qu",
    "s",
    "t",
    "th",
    "tr",
    "v",
    "x",
)
VOWELS = tuple(TONED_VOWELS.replace("đ", "").split()) + ("ươ", "ườ", "iê", "iế", "uô", "uộ", "oa", "oà", "uyê", "uyễ")
CODAS = ("", "c", "ch", "i", "m", "n", "ng", "nh", "o", "p", "t", "u", "y")
SEPARATORS = (" ", "  ", "\t", "\n", ", ", ". ", " - ", "_", "…", " “", "” ", "!", "?", " (", ") ", " 😀 ")


@st.composite
def syllables(draw: st.DrawFn) -> str:
    """A lowercase NFC Vietnamese-like syllable; a few carry a mark no precomposed letter has (x + acute)."""
    vowel = draw(st.sampled_from(VOWELS)) if draw(st.integers(0, 9)) else draw(st.sampled_from("aeiouxyz")) + "\u0301"
    return unicodedata.normalize("NFC", draw(st.sampled_from(ONSETS)) + vowel + draw(st.sampled_from(CODAS)))


@st.composite
def captions(draw: st.DrawFn) -> tuple[list[str], str]:
    """Syllables and a caption a person might type with them: any case, punctuation, NFC or NFD."""
    words = draw(st.lists(syllables(), min_size=0, max_size=8))
    cased = [draw(st.sampled_from([word, word.upper(), word.capitalize()])) for word in words]
    text = draw(st.sampled_from(["", " ", "\u201c", "("]))
    for word in cased:
        text += word + draw(st.sampled_from(SEPARATORS))
    form = draw(st.sampled_from(["NFC", "NFD", "NFKC"]))
    return words, unicodedata.normalize(form, text)


@settings(max_examples=150, deadline=None)
@given(captions())
def test_normalize_keeps_every_syllable_with_its_diacritics(caption: tuple[list[str], str]) -> None:
    words, text = caption
    normalized = normalize(text)
    assert normalized == " ".join(words)  # lowercase NFC syllables, single spaces, nothing else
    assert unicodedata.is_normalized("NFC", normalized)
    assert normalize(unicodedata.normalize("NFD", text)) == normalized
    assert normalize(normalized) == normalized


@settings(max_examples=150, deadline=None)
@given(captions())
def test_tokenize_and_detokenize_round_trip(caption: tuple[list[str], str]) -> None:
    words, text = caption
    assert tokenize(text) == tokenize(text, "syllable") == words
    assert detokenize(tokenize(text)) == normalize(text)
    word_tokens = tokenize(text, "word")
    assert detokenize(word_tokens) == normalize(text)  # pyvi may join syllables, never change them
    assert all(token and " " not in token for token in word_tokens)
    assert tokenize(unicodedata.normalize("NFD", text), "word") == word_tokens


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_normalize_on_any_text_is_nfc_lowercase_letters_marks_and_digits(text: str) -> None:
    normalized = normalize(text)
    assert unicodedata.is_normalized("NFC", normalized)
    assert normalized == normalized.strip() and "  " not in normalized
    assert all(unicodedata.category(char)[0] in "LMN" for char in normalized.replace(" ", ""))
    assert normalize(normalized) == normalized
    assert tokenize(text) == normalized.split()
