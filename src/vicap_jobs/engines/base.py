"""One inference interface for every backend: preprocess → _forward → postprocess.

Only ``_forward`` (encoder + step-wise decoding, the hot middle) differs between
backends. An engine is built from the model's text codec, its preprocessing
policy, a device and the decode options; ``preprocess`` applies the policy stored
with the checkpoint (so an engine sees exactly the pixels training saw) and
``postprocess`` is the codec's ``decode_caption``. Greedy and beam search come
from :mod:`vicap_jobs.models.decoding` whatever the backend: an engine only
supplies a ``step_fn`` and the initial state, and the codec says where to start,
where to stop and which ids never to emit.

This module imports no torch: the job system builds DecodeOptions and
``vicap_jobs.engines.load_engine`` reads the family without it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from PIL import Image

from vicap_jobs.data.images import Preprocessing
from vicap_jobs.errors import InputError
from vicap_jobs.models.codec import TextCodec
from vicap_jobs.models.manifest import ModelArtifacts

if TYPE_CHECKING:
    from vicap_jobs.models.decoding import DecoderState, StepFn


@dataclass(frozen=True)
class DecodeOptions:
    """How captions are searched: ``beam_size=1`` is greedy decoding.

    max_len counts generated tokens, EOS included; length_penalty is the GNMT
    alpha of :func:`vicap_jobs.models.decoding.beam_search` (0 = plain log-probabilities).
    """

    beam_size: int = 3
    max_len: int = 20
    length_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.max_len < 1:
            raise InputError(f"beam_size and max_len must be positive, got {self.beam_size} and {self.max_len}")
        if self.length_penalty < 0:
            raise InputError(f"length_penalty must be >= 0, got {self.length_penalty}")


class CaptionEngine(ABC):
    """Captions batches of RGB images; subclasses implement ``load`` and ``_forward``.

    Attributes: ``name`` (the engine's name in its family's registry line), ``precision``
    (of its image encoder: "fp32", "bf16", "int8"; what the family contract tests hold it to),
    ``codec``, ``preprocessing``, ``device`` ("cpu", "cuda", "cuda:N") and ``decode`` (DecodeOptions).
    """

    name: ClassVar[str]
    precision: ClassVar[str] = "fp32"

    def __init__(
        self, *, codec: TextCodec, preprocessing: Preprocessing, device: str, decode: DecodeOptions | None
    ) -> None:
        self.codec = codec
        self.preprocessing = preprocessing
        self.device = device
        self.decode = decode or DecodeOptions()

    @classmethod
    @abstractmethod
    def load(
        cls,
        artifacts: ModelArtifacts,
        *,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> CaptionEngine:
        """Open the model at ``artifacts`` (its checkpoint, or the export this engine runs)."""

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images → float32 (B, 3, S, S) by the model's preprocessing policy."""
        return self.preprocessing.apply(images)

    @abstractmethod
    def _forward(self, pixels: np.ndarray) -> list[list[int]]:
        """Pixels (B, 3, S, S) → generated token ids per image (without BOS/EOS)."""

    def postprocess(self, token_ids: Sequence[Sequence[int]]) -> list[str]:
        """Token ids → caption text (the codec's: stops at EOS, detokenized, NFC)."""
        return [self.codec.decode_caption(ids) for ids in token_ids]

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image, in order; an empty batch gives an empty list."""
        if not images:
            return []
        return self.postprocess(self._forward(self.preprocess(images)))

    def _search(self, step_fn: StepFn, state: DecoderState, batch_size: int) -> list[list[int]]:
        """Greedy (beam_size 1) or beam search over ``step_fn`` with this engine's options and codec."""
        # torch: imported by the engines that search, never by readers of DecodeOptions.
        from vicap_jobs.models.decoding import ban_tokens, beam_search, greedy_decode

        options, codec = self.decode, self.codec
        step_fn = ban_tokens(step_fn, tuple(codec.banned_ids))
        if options.beam_size == 1:
            return greedy_decode(
                step_fn, state, batch_size=batch_size, bos_id=codec.bos_id, eos_id=codec.eos_id, max_len=options.max_len
            )
        return beam_search(
            step_fn,
            state,
            batch_size=batch_size,
            beam_size=options.beam_size,
            max_len=options.max_len,
            length_penalty=options.length_penalty,
            bos_id=codec.bos_id,
            eos_id=codec.eos_id,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r}, decode={self.decode})"
