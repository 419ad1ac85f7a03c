"""Vietnamese caption text: one normalization and two tokenizations used everywhere.

Training, decoding and scoring must see captions the same way, so every caption
goes through `normalize` (NFC, lowercase, punctuation and symbols removed,
diacritics always kept) before it is split into syllables (space separated) or
words (pyvi, multi-syllable words joined by ``_``). This is the only module that
imports pyvi, and it does so lazily because loading its CRF model takes a second.

A data set may bring its own word segmentation (KTVIC's ``segment_caption``,
"khung_cảnh"). Such a reference is a `SegmentedCaption`: a plain string (the text
as given, so everything else sees the caption unchanged) that also carries the
segmented form, and `tokenize(..., "word")` takes its words from that form
instead of asking pyvi.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Sequence
from typing import Literal

from vicap_jobs.errors import UnknownNameError

Tokenization = Literal["syllable", "word"]
TOKENIZATIONS: tuple[Tokenization, ...] = ("syllable", "word")

# Unicode categories kept as text: letters, combining marks (diacritics that did
# not compose under NFC) and numbers. Everything else becomes a space.
_KEPT_CATEGORIES = ("L", "M", "N")


class SegmentedCaption(str):
    """A caption as given (the string itself) with the data set's word-segmented form in ``.segmented``."""

    segmented: str

    def __new__(cls, text: str, segmented: str) -> SegmentedCaption:
        caption = super().__new__(cls, text)
        caption.segmented = segmented
        return caption

    def __reduce__(self) -> tuple[type[SegmentedCaption], tuple[str, str]]:
        return (SegmentedCaption, (str(self), self.segmented))

    def __repr__(self) -> str:
        return f"SegmentedCaption({str(self)!r}, {self.segmented!r})"


def segmentation_of(text: str) -> str | None:
    """The data set's segmented form of `text` when it is a `SegmentedCaption`, else None."""
    return text.segmented if isinstance(text, SegmentedCaption) else None


def segmented_words(segmented: str) -> list[str]:
    """Words of a pre-segmented caption: split on spaces, ``_`` kept inside words, each syllable normalized.

    Punctuation tokens vanish and a syllable that normalization splits ("xe-máy")
    stays inside its word ("xe_máy"), so the words rejoin to normalized syllables.
    """
    words: list[str] = []
    for chunk in segmented.split():
        syllables = [piece for part in chunk.split("_") for piece in normalize(part).split()]
        if syllables:
            words.append("_".join(syllables))
    return words


def check_tokenization(name: str) -> Tokenization:
    """Return `name` as a `Tokenization`, or raise UnknownNameError listing the valid ones."""
    if name not in TOKENIZATIONS:
        raise UnknownNameError("tokenization", name, TOKENIZATIONS)
    return name  # narrowed to a Tokenization by the membership test


def _keep_or_space(char: str) -> str:
    """Map one character to itself when it is a letter, mark or digit, else to a space."""
    return char if unicodedata.category(char)[0] in _KEPT_CATEGORIES else " "


def normalize(text: str) -> str:
    """Return `text` as NFC, lowercase, without punctuation or symbols, single-spaced.

    Punctuation (including ``_``) and symbols become spaces so that "xe-máy" gives
    "xe máy" rather than "xemáy"; diacritics are never removed.
    """
    lowered = unicodedata.normalize("NFC", text.lower())
    return " ".join("".join(_keep_or_space(char) for char in lowered).split())


@functools.cache
def _pyvi_tokenize() -> Callable[[str], str]:
    """Import pyvi on first use and return its word tokenizer (the only cached global)."""
    from pyvi import ViTokenizer

    return ViTokenizer.tokenize


def _word_tokens(normalized: str) -> list[str]:
    """Split normalized text into pyvi words, falling back to syllables if pyvi alters the text.

    pyvi re-splits on its own regex (a leftover combining mark becomes a separate
    token), so the output is kept only when it rejoins to exactly the input syllables.
    """
    syllables = normalized.split()
    if not syllables:
        return []
    words = _pyvi_tokenize()(normalized).split()
    if detokenize(words).split() != syllables:
        return syllables
    return words


def tokenize(text: str, tokenization: Tokenization = "syllable") -> list[str]:
    """Normalize `text` and split it into syllables or words (``bóng_đá``).

    Words come from the data set's own segmentation for a `SegmentedCaption`, from pyvi otherwise.
    """
    if check_tokenization(tokenization) == "word":
        segmented = segmentation_of(text)
        return segmented_words(segmented) if segmented is not None else _word_tokens(normalize(text))
    return normalize(text).split()


def detokenize(tokens: Sequence[str]) -> str:
    """Join tokens back into normalized text: spaces between tokens, ``_`` inside words becomes a space."""
    return " ".join(token.replace("_", " ") for token in tokens)
