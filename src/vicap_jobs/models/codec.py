"""Text codecs: caption text ↔ token ids, the one thing engines and trainers know about a tokenizer.

A codec is written once per checkpoint (and copied into every export) and named
in the manifest by ``kind`` and ``file``; :data:`CODECS` maps each kind to its
class ("module:Class", imported only when used), whose ``load(path)`` reads that
file back. Implementations: ``vocab`` (:class:`vicap_jobs.data.vocab.Vocabulary`,
the CNN+LSTM families) and ``hf-tokenizer`` (:class:`vicap_jobs.models.hf_codec.HFTokenizerCodec`,
the vision-language families).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

from vicap_jobs.errors import InputError, UnknownNameError
from vicap_jobs.plugins import load_plugins, resolve

CODECS: dict[str, str] = {
    "vocab": "vicap_jobs.data.vocab:Vocabulary",
    "hf-tokenizer": "vicap_jobs.models.hf_codec:HFTokenizerCodec",
}


@runtime_checkable
class TextCodec(Protocol):
    """Caption text ↔ ids. Search starts at ``bos_id``, stops at ``eos_id`` and never emits ``banned_ids``."""

    @property
    def kind(self) -> str:
        """The key of this codec in :data:`CODECS` (stored in manifests)."""
        ...

    @property
    def tokenization(self) -> str:
        """How captions are split into tokens (``vicap_jobs.data.text.TOKENIZATIONS`` for scoring)."""
        ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def banned_ids(self) -> tuple[int, ...]:
        """Ids no caption contains (PAD and BOS for a vocabulary): masked out at every search step."""
        ...

    def __len__(self) -> int:
        """Number of ids (the model's output size)."""
        ...

    def encode_caption(self, caption: str, *, max_len: int | None = None) -> list[int]:
        """Caption text → ``[bos, ..., eos]``, at most ``max_len`` ids in all."""
        ...

    def decode_caption(self, ids: Iterable[int]) -> str:
        """Generated ids → caption text: stops at EOS, detokenized, NFC."""
        ...

    def save_codec(self, folder: Path) -> str:
        """Write the codec into ``folder``; returns the file (or sub-folder) name written there."""
        ...


def register_codec(kind: str, ref: str) -> None:
    """Add a codec kind (a plugin's): ``ref`` is ``"module:Class"`` of a class with ``load(path)``."""
    if CODECS.get(kind, ref) != ref:
        raise InputError(f"text codec {kind!r} is already registered")
    CODECS[kind] = ref


def codec_kinds() -> list[str]:
    """All codec kinds a manifest may name (plugins' included)."""
    load_plugins()
    return sorted(CODECS)


def load_codec(kind: str, path: Path) -> TextCodec:
    """Read the codec of ``kind`` saved at ``path``; an unknown kind lists the valid ones."""
    load_plugins()
    if kind not in CODECS:
        raise UnknownNameError("text codec", kind, codec_kinds())
    codec = resolve(CODECS[kind]).load(Path(path))
    if not isinstance(codec, TextCodec):
        raise InputError(f"{CODECS[kind]} does not implement the text codec protocol")
    return codec
