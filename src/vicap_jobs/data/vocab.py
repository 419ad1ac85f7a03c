"""Token vocabulary for the CNN+LSTM families: token <-> id maps, encoding and a JSON file format.

It is one implementation of the text codec protocol (``vicap_jobs.models.codec.TextCodec``:
``encode_caption`` / ``decode_caption``, the special ids, ``banned_ids``, ``save_codec``);
it satisfies that protocol structurally, so this module imports nothing from ``models``.

Build it from the TRAIN split only: the seed project fitted its vocabulary on
train+val+test, which leaks evaluation words into training and hides the real
out-of-vocabulary rate. Ids 0-3 are the special tokens; the rest are ordered by
frequency (descending), then alphabetically, so the same captions always give the
same ids. The file stores the tokenization so a model is never decoded with the
wrong one.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from vicap_jobs.data.text import TOKENIZATIONS, Tokenization, check_tokenization, detokenize, tokenize
from vicap_jobs.errors import InputError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
FORMAT_VERSION = 1
VOCAB_FILE = "vocab.json"


class Vocabulary:
    """Maps tokens to ids and back; build from the TRAIN split only (never val or test)."""

    kind: ClassVar[str] = "vocab"  # the codec kind stored in manifests
    bos_id: ClassVar[int] = BOS_ID
    eos_id: ClassVar[int] = EOS_ID
    pad_id: ClassVar[int] = PAD_ID
    banned_ids: ClassVar[tuple[int, ...]] = (PAD_ID, BOS_ID)  # no caption contains them: search never emits them

    def __init__(self, tokens: Sequence[str], *, tokenization: str, min_freq: int = 1) -> None:
        """Wrap an id-ordered token list that starts with the four special tokens."""
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise InputError(f"vocabulary must start with {', '.join(SPECIAL_TOKENS)}")
        if len(set(tokens)) != len(tokens):
            raise InputError("vocabulary tokens must be unique")
        self.tokenization: Tokenization = check_tokenization(tokenization)
        self.min_freq = min_freq
        self._tokens: list[str] = list(tokens)
        self._ids: dict[str, int] = {token: index for index, token in enumerate(self._tokens)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], *, min_freq: int = 1, tokenization: str) -> Vocabulary:
        """Count tokens of the TRAIN captions and keep those seen at least `min_freq` times."""
        if min_freq < 1:
            raise InputError(f"min_freq must be at least 1, got {min_freq}")
        counts = Counter(token for tokens in token_lists for token in tokens)
        kept = [(token, count) for token, count in counts.items() if count >= min_freq and token not in SPECIAL_TOKENS]
        kept.sort(key=lambda item: (-item[1], item[0]))
        return cls([*SPECIAL_TOKENS, *(token for token, _ in kept)], tokenization=tokenization, min_freq=min_freq)

    def __len__(self) -> int:
        """Number of ids, special tokens included."""
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        """Whether `token` has its own id (is not mapped to <unk>)."""
        return token in self._ids

    @property
    def tokens(self) -> list[str]:
        """Tokens in id order (a copy)."""
        return list(self._tokens)

    def token_id(self, token: str) -> int:
        """Id of `token`, or UNK_ID when it is out of vocabulary."""
        return self._ids.get(token, UNK_ID)

    def encode(self, tokens: Sequence[str], *, max_len: int | None = None) -> list[int]:
        """Return BOS + ids + EOS; with `max_len`, cut the ids so the total fits and EOS stays last."""
        ids = [self.token_id(token) for token in tokens]
        if max_len is not None:
            if max_len < 2:
                raise InputError(f"max_len must leave room for <bos> and <eos>, got {max_len}")
            ids = ids[: max_len - 2]
        return [BOS_ID, *ids, EOS_ID]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Map ids to tokens, skipping <bos>/<pad> and stopping at the first <eos>."""
        tokens: list[str] = []
        for index in ids:
            if index == EOS_ID:
                break
            if index in (BOS_ID, PAD_ID):
                continue
            if not 0 <= index < len(self._tokens):
                raise InputError(f"token id {index} is outside the vocabulary (size {len(self._tokens)})")
            tokens.append(self._tokens[index])
        return tokens

    def encode_caption(self, caption: str, *, max_len: int | None = None) -> list[int]:
        """Caption text → BOS + ids + EOS, tokenized with this vocabulary's tokenization (see `encode`)."""
        return self.encode(tokenize(caption, self.tokenization), max_len=max_len)

    def decode_caption(self, ids: Iterable[int]) -> str:
        """Ids → caption text: stops at EOS, ``_`` inside words undone, NFC."""
        return unicodedata.normalize("NFC", detokenize(self.decode(ids)))

    def save_codec(self, folder: Path) -> str:
        """Write ``vocab.json`` into ``folder``; returns that file name (the manifest's codec file)."""
        self.save(Path(folder) / VOCAB_FILE)
        return VOCAB_FILE

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form written by `save`."""
        return {
            "format_version": FORMAT_VERSION,
            "tokenization": self.tokenization,
            "min_freq": self.min_freq,
            "tokens": self._tokens,
        }

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as UTF-8 JSON (diacritics kept readable)."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a file written by `save`; raise InputError naming the file when it is malformed."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read vocabulary file {path}: {exc}") from exc
        try:
            return cls._from_dict(data)
        except InputError as exc:
            raise InputError(f"malformed vocabulary file {path}: {exc}") from exc

    @classmethod
    def _from_dict(cls, data: object) -> Vocabulary:
        """Validate the fields of a loaded file and build the vocabulary."""
        if not isinstance(data, dict):
            raise InputError("expected a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise InputError(f"unsupported format_version {version!r} (this code reads {FORMAT_VERSION})")
        tokens, tokenization, min_freq = data.get("tokens"), data.get("tokenization"), data.get("min_freq")
        if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
            raise InputError("'tokens' must be a list of strings")
        if not isinstance(tokenization, str) or tokenization not in TOKENIZATIONS:
            raise InputError(f"'tokenization' must be one of {', '.join(TOKENIZATIONS)}, got {tokenization!r}")
        if not isinstance(min_freq, int) or isinstance(min_freq, bool) or min_freq < 1:
            raise InputError("'min_freq' must be a positive integer")
        return cls(tokens, tokenization=tokenization, min_freq=min_freq)
