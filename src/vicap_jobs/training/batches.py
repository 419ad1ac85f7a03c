"""Captions → padded teacher-forcing batches.

Every caption is tokenized once, encoded as ``[BOS, w1..wn, EOS]`` and kept
whole: a batch feeds ``tokens_in = [BOS, w1..wn]`` and scores ``targets =
[w1..wn, EOS]`` at every position in one pass, with PAD masked out of the loss.
(The seed project expanded each caption into one (prefix → next word) sample
per position, which costs O(n²) LSTM steps per caption instead of O(n).)

Training batches are drawn over CAPTIONS (each caption once per epoch, as
Show-Attend-Tell does): many more optimizer steps per epoch than batching
images with all their captions, which is what a backbone trained from scratch
needs. An image that appears twice in one batch is still run through the
backbone once. Evaluation batches go over images, each with all its captions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vicap_jobs.data.samples import CaptionSample
from vicap_jobs.data.text import Tokenization, tokenize
from vicap_jobs.data.vocab import PAD_ID, Vocabulary


@dataclass(frozen=True)
class EncodedCaptions:
    """All captions of one split, encoded; ``image_row[i]`` is the sample index of ``ids[i]``."""

    ids: list[list[int]]
    image_row: list[int]
    captions_of_image: list[list[int]]  # sample index -> indices into ``ids``

    @property
    def n_images(self) -> int:
        """Number of samples (images) in the split."""
        return len(self.captions_of_image)


@dataclass(frozen=True)
class CaptionBatch:
    """One teacher-forcing batch of B captions padded to the longest one (T = its length - 1)."""

    image_row: Tensor  # (B,) long: which row of the image rows passed in feeds each caption
    tokens_in: Tensor  # (B, T) long: [BOS, w1..wn, PAD..]
    targets: Tensor  # (B, T) long: [w1..wn, EOS, PAD..]
    mask: Tensor  # (B, T) bool: True up to and including each caption's EOS (PAD may equal EOS: GPT-2)

    @property
    def n_tokens(self) -> int:
        """Number of scored (non-PAD) target positions."""
        return int(self.mask.sum())


def tokenize_samples(samples: Sequence[CaptionSample], tokenization: Tokenization) -> list[list[list[str]]]:
    """Tokens of every caption, per sample (same normalization as scoring)."""
    return [[tokenize(caption, tokenization) for caption in sample.captions] for sample in samples]


def encode_captions(
    token_lists: Sequence[Sequence[Sequence[str]]], vocab: Vocabulary, *, max_len: int
) -> EncodedCaptions:
    """Encode the per-sample token lists of `tokenize_samples` (captions longer than `max_len` are cut).

    Empty captions (nothing left after normalization) are skipped: they would
    only teach the model to stop at once.
    """
    ids: list[list[int]] = []
    image_row: list[int] = []
    captions_of_image: list[list[int]] = []
    for row, captions in enumerate(token_lists):
        mine: list[int] = []
        for tokens in captions:
            if not tokens:
                continue
            mine.append(len(ids))
            ids.append(vocab.encode(tokens, max_len=max_len))
            image_row.append(row)
        captions_of_image.append(mine)
    return EncodedCaptions(ids=ids, image_row=image_row, captions_of_image=captions_of_image)


def collate(sequences: Sequence[Sequence[int]], image_row: Sequence[int], *, pad_id: int = PAD_ID) -> CaptionBatch:
    """Pad encoded ``[BOS..EOS]`` sequences and shift them into inputs and targets."""
    if not sequences:
        raise ValueError("collate needs at least one sequence")
    longest = max(len(seq) for seq in sequences)
    padded = torch.full((len(sequences), longest), pad_id, dtype=torch.long)  # (B, T+1)
    for i, seq in enumerate(sequences):
        padded[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    tokens_in = padded[:, :-1].clone()  # (B, T)
    targets = padded[:, 1:].clone()  # (B, T)
    # Targets past a caption's EOS are never scored (counted by length: a tokenizer may pad with EOS).
    lengths = torch.as_tensor([len(seq) - 1 for seq in sequences], dtype=torch.long)  # (B,)
    return CaptionBatch(
        image_row=torch.as_tensor(list(image_row), dtype=torch.long),
        tokens_in=tokens_in,
        targets=targets,
        mask=torch.arange(longest - 1).unsqueeze(0) < lengths.unsqueeze(1),  # (B, T)
    )


def batch_for_images(encoded: EncodedCaptions, rows: Sequence[int], *, pad_id: int = PAD_ID) -> CaptionBatch:
    """All captions of images ``rows``; ``batch.image_row`` indexes into ``rows`` (0..len(rows)-1)."""
    sequences: list[list[int]] = []
    local_row: list[int] = []
    for position, row in enumerate(rows):
        for caption in encoded.captions_of_image[row]:
            sequences.append(encoded.ids[caption])
            local_row.append(position)
    return collate(sequences, local_row, pad_id=pad_id)


def batch_for_captions(encoded: EncodedCaptions, captions: Sequence[int]) -> tuple[list[int], CaptionBatch]:
    """Captions by index: the distinct image rows they need (first-seen order) and their batch.

    ``batch.image_row`` indexes into the returned rows, so each image's features
    are computed once per batch.
    """
    rows: list[int] = []
    local: dict[int, int] = {}
    for caption in captions:
        row = encoded.image_row[caption]
        if row not in local:
            local[row] = len(rows)
            rows.append(row)
    batch = collate([encoded.ids[c] for c in captions], [local[encoded.image_row[c]] for c in captions])
    return rows, batch


def index_batches(n_items: int, batch_size: int, *, generator: torch.Generator | None = None) -> Iterator[list[int]]:
    """0..n_items-1 in chunks of `batch_size`; shuffled when a `generator` is given (else in order)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = torch.randperm(n_items, generator=generator).tolist() if generator is not None else list(range(n_items))
    for start in range(0, n_items, batch_size):
        yield order[start : start + batch_size]
