"""Vietnamese caption text: one normalization and two tokenizations used everywhere.

Training, decoding and scoring must see captions the same way, so every caption
goes through `normalize` (NFC, lowercase, punctuation and symbols removed,
diacritics always kept) before it is split into syllables (space separated) or
words (pyvi, multi-syllable words joined by ``_``). This is the only module that
imports pyvi, and it does so lazily because loading its CRF model takes a second.
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
    """Normalize `text` and split it into syllables or pyvi words (``bóng_đá``)."""
    normalized = normalize(text)
    if check_tokenization(tokenization) == "word":
        return _word_tokens(normalized)
    return normalized.split()


def detokenize(tokens: Sequence[str]) -> str:
    """Join tokens back into normalized text: spaces between tokens, ``_`` inside words becomes a space."""
    return " ".join(token.replace("_", " ") for token in tokens)
