"""One inference interface for every backend: preprocess → _forward → postprocess.

Only ``_forward`` (encoder + step-wise decoding, the hot middle) differs between
backends. ``preprocess`` is always :func:`vicap_jobs.data.images.preprocess` at
the checkpoint's image size, so an engine sees exactly the pixels training saw,
and ``postprocess`` is always ``vocab.decode`` + ``text.detokenize``.
Greedy and beam search come from :mod:`vicap_jobs.models.decoding` whatever the
backend: an engine only supplies a ``step_fn`` and the initial state.
"""

from __future__ import annotations

import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from vicap_jobs.data.images import preprocess as preprocess_images
from vicap_jobs.data.text import detokenize
from vicap_jobs.data.vocab import BOS_ID, EOS_ID, PAD_ID, Vocabulary
from vicap_jobs.errors import InputError
from vicap_jobs.models.decoding import DecoderState, StepFn, ban_tokens, beam_search, greedy_decode


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
    """Captions batches of RGB images; subclasses implement ``_forward`` only.

    Attributes: ``name`` (the registry name), ``device`` ("cpu", "cuda", "cuda:N"),
    ``decode`` (DecodeOptions), ``vocab`` and ``image_size`` (from the checkpoint).
    """

    name: ClassVar[str]

    def __init__(self, *, vocab: Vocabulary, image_size: int, device: str, decode: DecodeOptions | None) -> None:
        self.vocab = vocab
        self.image_size = image_size
        self.device = device
        self.decode = decode or DecodeOptions()

    @classmethod
    @abstractmethod
    def load(
        cls,
        checkpoint_dir: Path,
        *,
        onnx_dir: Path | None = None,
        device: str = "cpu",
        decode: DecodeOptions | None = None,
        threads: int | None = None,
    ) -> CaptionEngine:
        """Open checkpoint ``checkpoint_dir`` (and, for ONNX engines, its export folder ``onnx_dir``)."""

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images → float32 (B, 3, S, S), ImageNet-normalized, S = the checkpoint's image size."""
        return preprocess_images(images, self.image_size)

    @abstractmethod
    def _forward(self, pixels: np.ndarray) -> list[list[int]]:
        """Pixels (B, 3, S, S) → generated token ids per image (without BOS/EOS)."""

    def postprocess(self, token_ids: Sequence[Sequence[int]]) -> list[str]:
        """Token ids → caption text (NFC, tokens joined with spaces, ``_`` inside words undone)."""
        return [unicodedata.normalize("NFC", detokenize(self.vocab.decode(ids))) for ids in token_ids]

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image, in order; an empty batch gives an empty list."""
        if not images:
            return []
        return self.postprocess(self._forward(self.preprocess(images)))

    def _search(self, step_fn: StepFn, state: DecoderState, batch_size: int) -> list[list[int]]:
        """Greedy (beam_size 1) or beam search over ``step_fn`` with this engine's options."""
        options = self.decode
        step_fn = ban_tokens(step_fn, (PAD_ID, BOS_ID))
        if options.beam_size == 1:
            return greedy_decode(
                step_fn, state, batch_size=batch_size, bos_id=BOS_ID, eos_id=EOS_ID, max_len=options.max_len
            )
        return beam_search(
            step_fn,
            state,
            batch_size=batch_size,
            beam_size=options.beam_size,
            max_len=options.max_len,
            length_penalty=options.length_penalty,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r}, decode={self.decode})"
