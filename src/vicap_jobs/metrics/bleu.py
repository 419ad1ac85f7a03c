"""Corpus BLEU-1..4 computed exactly as pycocoevalcap's `BleuScorer` with option "closest".

Published captioning numbers come from the COCO caption toolkit, so ours must match
it to the last digit, quirks included: n-gram matches are clipped by the largest
count in any one reference and summed over the corpus; the brevity penalty uses,
per sentence, the reference length closest to the candidate length (a tie goes to
the shorter reference); every ratio adds 1e-15 above and 1e-9 below the line, so
a corpus with no 4-gram match scores about 1e-4 rather than exactly 0. Inputs are
token lists that `vicap_jobs.data.text.tokenize` already produced.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vicap_jobs.errors import InputError

MAX_N = 4
TINY = 1e-15  # added to numerators, so that zero matches still give a (tiny) number
SMALL = 1e-9  # added to denominators, so that empty candidates never divide by zero

NGram = tuple[str, ...]


def ngram_counts(tokens: Sequence[str], max_n: int = MAX_N) -> Counter[NGram]:
    """Count every n-gram of `tokens` for n = 1..max_n."""
    counts: Counter[NGram] = Counter()
    for n in range(1, max_n + 1):
        counts.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return counts


def max_reference_counts(references: Iterable[Sequence[str]], max_n: int = MAX_N) -> dict[NGram, int]:
    """For each n-gram, its largest count in any single reference (the clipping ceiling)."""
    ceilings: dict[NGram, int] = {}
    for reference in references:
        for ngram, count in ngram_counts(reference, max_n).items():
            if count > ceilings.get(ngram, 0):
                ceilings[ngram] = count
    return ceilings


def closest_reference_length(candidate_length: int, reference_lengths: Iterable[int]) -> int:
    """The reference length nearest to `candidate_length`; on a tie the shorter one (as pycocoevalcap)."""
    return min(reference_lengths, key=lambda length: (abs(length - candidate_length), length))


@dataclass
class BleuCounts:
    """Sufficient statistics of BLEU, summable over sentences: lengths and per-order n-gram counts."""

    max_n: int = MAX_N
    candidate_length: int = 0
    reference_length: int = 0
    guessed: list[int] = field(default_factory=list)  # candidate n-grams per order n = 1..max_n
    matched: list[int] = field(default_factory=list)  # clipped matches per order

    def __post_init__(self) -> None:
        """Start the per-order counts at zero unless given."""
        self.guessed = self.guessed or [0] * self.max_n
        self.matched = self.matched or [0] * self.max_n

    def add(self, other: BleuCounts) -> None:
        """Accumulate another sentence's (or corpus part's) counts into this one."""
        self.candidate_length += other.candidate_length
        self.reference_length += other.reference_length
        for k in range(self.max_n):
            self.guessed[k] += other.guessed[k]
            self.matched[k] += other.matched[k]


def sentence_counts(candidate: Sequence[str], references: Sequence[Sequence[str]], max_n: int = MAX_N) -> BleuCounts:
    """BLEU statistics of one candidate against its references."""
    ceilings = max_reference_counts(references, max_n)
    matched = [0] * max_n
    for ngram, count in ngram_counts(candidate, max_n).items():
        matched[len(ngram) - 1] += min(count, ceilings.get(ngram, 0))
    length = len(candidate)
    return BleuCounts(
        max_n=max_n,
        candidate_length=length,
        reference_length=closest_reference_length(length, (len(reference) for reference in references)),
        guessed=[max(0, length - n + 1) for n in range(1, max_n + 1)],
        matched=matched,
    )


def bleu_from_counts(counts: BleuCounts) -> tuple[float, ...]:
    """BLEU-1..max_n from summed statistics, with pycocoevalcap's smoothing and brevity penalty."""
    scores: list[float] = []
    product = 1.0
    for k in range(counts.max_n):
        product *= float(counts.matched[k] + TINY) / (counts.guessed[k] + SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (counts.candidate_length + TINY) / (counts.reference_length + SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [score * penalty for score in scores]
    return tuple(scores)


def corpus_bleu(
    candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], max_n: int = MAX_N
) -> tuple[float, ...]:
    """Corpus BLEU-1..max_n of tokenized candidates, each with its own non-empty list of tokenized references."""
    if len(candidates) != len(references):
        raise InputError(f"{len(candidates)} candidates but {len(references)} reference lists")
    total = BleuCounts(max_n=max_n)
    for candidate, refs in zip(candidates, references, strict=True):
        total.add(sentence_counts(candidate, refs, max_n))
    return bleu_from_counts(total)
