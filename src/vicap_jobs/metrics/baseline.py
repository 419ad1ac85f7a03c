"""Blind baseline: the single train caption that, predicted for every image, scores best.

A model must beat "say the same sentence for every picture" before its numbers
mean anything. The caption is chosen on the TRAIN references only (then scored on
val/test with `evaluate_constant`), by corpus BLEU-4 with ties broken by ROUGE-L.
Trying 13k candidates with a full corpus BLEU each would take hours, so the BLEU-4
of a constant caption is computed from counts precomputed once: for each n-gram g,
how many images allow at least k copies of g (the clipped matches of a constant
caption are the sums of these), and for each caption length, the summed
closest-reference lengths. The result equals `score_captions` exactly.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import TypeVar

from vicap_jobs.data.text import Tokenization, check_tokenization, detokenize, tokenize
from vicap_jobs.errors import InputError
from vicap_jobs.metrics.bleu import (
    MAX_N,
    BleuCounts,
    NGram,
    bleu_from_counts,
    closest_reference_length,
    max_reference_counts,
    ngram_counts,
)
from vicap_jobs.metrics.rouge import corpus_rouge_l
from vicap_jobs.metrics.scores import CaptionScores, score_captions

K = TypeVar("K", bound=Hashable)

Tokens = tuple[str, ...]


@dataclass(frozen=True)
class BaselineChoice:
    """The chosen constant caption (normalized text) and its corpus scores on the train references."""

    caption: str
    bleu_4: float
    rouge_l: float


@dataclass(frozen=True)
class _ConstantBleuIndex:
    """Corpus statistics that give the BLEU counts of any constant caption without rescanning images."""

    n_images: int
    # clipped_matches[g][k - 1]: corpus clipped matches of g for a caption containing g k times,
    # = sum over j <= k of #images whose largest reference count of g is >= j.
    clipped_matches: dict[NGram, list[int]]
    reference_lengths: list[list[int]]  # per image, the lengths of its references

    @classmethod
    def build(cls, references: Sequence[Sequence[Tokens]]) -> _ConstantBleuIndex:
        """Count, per n-gram and per multiplicity, the images whose references allow it."""
        at_least: dict[NGram, list[int]] = {}
        for refs in references:
            for ngram, ceiling in max_reference_counts(refs, MAX_N).items():
                counts = at_least.setdefault(ngram, [])
                counts.extend([0] * (ceiling - len(counts)))
                for k in range(ceiling):
                    counts[k] += 1
        return cls(
            n_images=len(references),
            clipped_matches={ngram: list(accumulate(counts)) for ngram, counts in at_least.items()},
            reference_lengths=[[len(ref) for ref in refs] for refs in references],
        )

    def reference_length_sum(self, length: int) -> int:
        """Sum over images of the reference length closest to `length` (the brevity-penalty denominator)."""
        return sum(closest_reference_length(length, lengths) for lengths in self.reference_lengths)

    def counts(self, caption: Tokens, reference_length_sum: int) -> BleuCounts:
        """Corpus BLEU statistics of predicting `caption` for every image."""
        matched = [0] * MAX_N
        for ngram, count in ngram_counts(caption, MAX_N).items():
            clipped = self.clipped_matches.get(ngram)
            if clipped:
                matched[len(ngram) - 1] += clipped[min(count, len(clipped)) - 1]
        length = len(caption)
        return BleuCounts(
            max_n=MAX_N,
            candidate_length=self.n_images * length,
            reference_length=reference_length_sum,
            guessed=[self.n_images * max(0, length - n + 1) for n in range(1, MAX_N + 1)],
            matched=matched,
        )


def _tokenized_references(references: Mapping[K, Sequence[str]], tokenization: Tokenization) -> list[list[Tokens]]:
    """Tokenize every reference, image by image; raise InputError on empty input."""
    if not references:
        raise InputError("no reference captions given")
    tokenized: list[list[Tokens]] = []
    for key, refs in references.items():
        if isinstance(refs, str) or len(refs) == 0:
            raise InputError(f"image {key!r} needs a non-empty list of reference captions")
        tokenized.append([tuple(tokenize(ref, tokenization)) for ref in refs])
    return tokenized


def _constant_bleu_4(references: Sequence[Sequence[Tokens]]) -> dict[Tokens, float]:
    """Corpus BLEU-4 of every distinct non-empty reference caption used as a constant prediction."""
    candidates = list(dict.fromkeys(ref for refs in references for ref in refs if ref))
    if not candidates:
        raise InputError("every reference caption is empty after normalization")
    index = _ConstantBleuIndex.build(references)
    length_sums = {length: index.reference_length_sum(length) for length in {len(c) for c in candidates}}
    return {c: bleu_from_counts(index.counts(c, length_sums[len(c)]))[MAX_N - 1] for c in candidates}


def constant_caption_bleu_4(references: Mapping[K, Sequence[str]], *, tokenization: Tokenization) -> dict[str, float]:
    """Corpus BLEU-4 of every distinct normalized reference caption predicted for every image."""
    tokenized = _tokenized_references(references, check_tokenization(tokenization))
    return {detokenize(caption): score for caption, score in _constant_bleu_4(tokenized).items()}


def choose_blind_baseline(train_references: Mapping[K, Sequence[str]], *, tokenization: Tokenization) -> BaselineChoice:
    """Pick the distinct normalized train caption with the best constant-prediction BLEU-4 on train.

    Ties on BLEU-4 go to the higher ROUGE-L, then to the alphabetically first caption;
    ROUGE-L is computed only for the tied best candidates.
    """
    tokenization = check_tokenization(tokenization)
    references = _tokenized_references(train_references, tokenization)
    bleu_4 = _constant_bleu_4(references)
    best_bleu = max(bleu_4.values())
    tied = [caption for caption, score in bleu_4.items() if score == best_bleu]
    rouge = {caption: corpus_rouge_l([caption] * len(references), references) for caption in tied}
    best = min(tied, key=lambda caption: (-rouge[caption], detokenize(caption)))
    return BaselineChoice(caption=detokenize(best), bleu_4=best_bleu, rouge_l=rouge[best])


def evaluate_constant(
    caption: str, references: Mapping[K, Sequence[str]], *, tokenization: Tokenization
) -> CaptionScores:
    """Scores of predicting `caption` for every image of `references` (e.g. the baseline on test)."""
    return score_captions(dict.fromkeys(references, caption), references, tokenization=tokenization)
