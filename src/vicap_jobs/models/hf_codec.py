"""The Hugging Face text codec: a ``tokenizers`` / transformers tokenizer behind the text codec protocol.

Every vision-language family (BLIP, ClipCap, BLIP-2, ViT + Vietnamese decoder)
reads and writes captions through this class, so searching, scoring and the
checkpoint format are the same whatever tokenizer a model uses. A codec is one
folder (``tokenizer/`` in a checkpoint): the tokenizer's own ``save_pretrained``
output plus ``vicap_codec.json`` with the ids search needs (start, stop, pad) and
the ids no caption may contain.

Captions are normalized exactly as for scoring (``data.text.normalize``: NFC,
lowercase, punctuation removed, diacritics kept) before encoding, and decoded text
is NFC again, so a model learns and writes the text the metrics see.

Which tokenizer (measured on the 19,256 UIT-ViIC captions; ``tests/models/test_hf_codec.py``):

- The default, :func:`train_caption_tokenizer`: a byte-level BPE trained on the
  TRAIN split's captions with an NFC + lowercase normalizer. Its alphabet is the
  256 bytes, so no character can become unknown; every caption round-trips
  exactly, diacritics included, even characters train never saw ("Mỹ").
- A WordPiece (BERT's, BLIP's stock tokenizer) strips accents under its default
  normalization and, even with ``strip_accents=False``, maps characters unseen in
  train to ``[UNK]``: rejected.
- A local Vietnamese tokenizer folder (a Vietnamese GPT-2's, BARTpho's, OPT's) is
  accepted after :func:`check_keeps_text` found it round-trips the train captions.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vicap_jobs.data.text import normalize
from vicap_jobs.errors import InputError, NotFoundError, WeightsMissingError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)
# torchao (imported by transformers when installed) registers two Enums with torch's pytree, which
# warns about a deprecation on every import: noise on every command that loads a tokenizer or model.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

CODEC_KIND = "hf-tokenizer"
CODEC_DIR = "tokenizer"  # the codec's folder inside a checkpoint
IDS_FILE = "vicap_codec.json"
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
DEFAULT_VOCAB_SIZE = 8000
MAX_LOSS_FRACTION = 0.01  # a supplied tokenizer may fail to round-trip at most this share of train captions


@dataclass(frozen=True)
class SpecialIds:
    """Where search starts (bos), stops (eos), what pads batches, and the ids no caption contains."""

    bos_id: int
    eos_id: int
    pad_id: int
    banned_ids: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "banned_ids": list(self.banned_ids),
        }


def special_ids(tokenizer: PreTrainedTokenizerBase) -> SpecialIds:
    """The codec ids of a tokenizer: BOS (or, GPT-2 style, the end-of-text token) starts, EOS stops.

    A tokenizer without a pad token pads with EOS (masked out of the loss anyway).
    Every other special id (pad, bos, unk, an image placeholder) is banned from captions.
    """
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    if eos is None:
        raise InputError("the tokenizer has no end-of-sequence token (eos or sep); captions could never end")
    bos = eos if bos is None else bos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    specials = {int(i) for i in tokenizer.all_special_ids}
    banned = tuple(sorted((specials | {int(bos), int(pad)}) - {int(eos)}))
    return SpecialIds(bos_id=int(bos), eos_id=int(eos), pad_id=int(pad), banned_ids=banned)


class HFTokenizerCodec:
    """Caption text ↔ ids through a Hugging Face tokenizer (the ``hf-tokenizer`` codec kind)."""

    kind: ClassVar[str] = CODEC_KIND
    tokenization: ClassVar[str] = "syllable"  # captions are scored on syllables whatever the subwords

    def __init__(self, tokenizer: PreTrainedTokenizerBase, ids: SpecialIds | None = None) -> None:
        self.tokenizer = tokenizer
        self.ids = ids or special_ids(tokenizer)

    @property
    def bos_id(self) -> int:
        return self.ids.bos_id

    @property
    def eos_id(self) -> int:
        return self.ids.eos_id

    @property
    def pad_id(self) -> int:
        return self.ids.pad_id

    @property
    def banned_ids(self) -> tuple[int, ...]:
        return self.ids.banned_ids

    def __len__(self) -> int:
        """Ids the model must have embeddings for (added tokens included)."""
        return len(self.tokenizer)

    def encode_text(self, caption: str) -> list[int]:
        """The normalized caption's ids, without BOS/EOS."""
        return list(self.tokenizer.encode(normalize(caption), add_special_tokens=False))

    def encode_caption(self, caption: str, *, max_len: int | None = None) -> list[int]:
        """Caption → ``[bos, ..., eos]``; with ``max_len`` the text is cut so EOS stays last."""
        ids = self.encode_text(caption)
        if max_len is not None:
            if max_len < 2:
                raise InputError(f"max_len must leave room for BOS and EOS, got {max_len}")
            ids = ids[: max_len - 2]
        return [self.bos_id, *ids, self.eos_id]

    def decode_caption(self, ids: Iterable[int]) -> str:
        """Generated ids → text: stops at EOS, drops special tokens, NFC, single spaces."""
        kept: list[int] = []
        for index in ids:
            if index == self.eos_id:
                break
            kept.append(int(index))
        text = str(self.tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False))
        return " ".join(unicodedata.normalize("NFC", text).split())

    def round_trips(self, caption: str) -> bool:
        """True when the normalized caption comes back unchanged from encode → decode."""
        return self.decode_caption(self.encode_text(caption)) == normalize(caption)

    def save_codec(self, folder: Path) -> str:
        """Write the tokenizer and the codec ids into ``folder/tokenizer``; returns ``"tokenizer"``."""
        target = Path(folder) / CODEC_DIR
        self.save_to(target)
        return CODEC_DIR

    def save_to(self, target: Path) -> None:
        """Write the tokenizer folder (``save_pretrained`` output + ``vicap_codec.json``) at ``target``."""
        target.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(target))
        (target / IDS_FILE).write_text(json.dumps(self.ids.to_json(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> HFTokenizerCodec:
        """Read a codec folder written by :meth:`save_codec` (ids from its ``vicap_codec.json``)."""
        path = Path(path)
        tokenizer = load_tokenizer(path)
        ids_file = path / IDS_FILE
        if not ids_file.is_file():
            return cls(tokenizer)
        try:
            raw = json.loads(ids_file.read_text(encoding="utf-8"))
            ids = SpecialIds(
                bos_id=int(raw["bos_id"]),
                eos_id=int(raw["eos_id"]),
                pad_id=int(raw["pad_id"]),
                banned_ids=tuple(int(i) for i in raw["banned_ids"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"text codec file {ids_file} is malformed: {exc}") from exc
        return cls(tokenizer, ids)


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """A tokenizer from a LOCAL folder (never downloaded); a missing one is one line saying what to provide."""
    from transformers import AutoTokenizer  # transformers takes seconds to import: only where a tokenizer loads

    path = Path(path).expanduser()
    if not path.is_dir():
        raise WeightsMissingError(
            f"tokenizer folder {path} does not exist; give a local Hugging Face tokenizer folder "
            "(e.g. from `hf download <model id> --local-dir DIR`) or --tokenizer train"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path.resolve()), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotFoundError(f"no usable tokenizer in {path}: {str(exc).splitlines()[0]}") from exc


def train_caption_tokenizer(
    captions: Iterable[str], *, vocab_size: int = DEFAULT_VOCAB_SIZE, extra_special: Sequence[str] = ()
) -> HFTokenizerCodec:
    """A byte-level BPE (NFC + lowercase) trained on TRAIN captions; ids 0-3 are <pad>, <s>, </s>, <unk>.

    ``extra_special`` adds special tokens after those (e.g. BLIP-2's ``<image>``).
    The result round-trips any normalized caption exactly (byte alphabet: no unknown).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast  # both imported only where a tokenizer is trained

    if vocab_size < 300:
        raise InputError(f"tokenizer vocab_size must be at least 300 (256 bytes + specials), got {vocab_size}")
    specials = [PAD, BOS, EOS, UNK, *extra_special]
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [normalize(caption) for caption in captions]
    if not any(texts):
        raise InputError("no train caption to learn a tokenizer from")
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(extra_special) or None,
        clean_up_tokenization_spaces=False,
    )
    return HFTokenizerCodec(fast)


def check_keeps_text(codec: HFTokenizerCodec, captions: Sequence[str], *, source: str) -> int:
    """Refuse a tokenizer that loses caption text (accents stripped, characters → unknown).

    Returns how many of ``captions`` fail to round-trip; more than
    MAX_LOSS_FRACTION of them is an InputError quoting the first one.
    """
    failures = [caption for caption in captions if not codec.round_trips(caption)]
    if not failures:
        return 0
    example = normalize(failures[0])
    decoded = codec.decode_caption(codec.encode_text(failures[0]))
    message = (
        f"tokenizer {source} does not keep {len(failures)} of {len(captions)} train captions "
        f"(e.g. {example!r} comes back as {decoded!r})"
    )
    if len(failures) > MAX_LOSS_FRACTION * len(captions):
        raise InputError(f"{message}; use --tokenizer train or a tokenizer that covers Vietnamese")
    log.warning("%s; training anyway", message)
    return len(failures)
