"""ROUGE-L computed exactly as pycocoevalcap's `Rouge` scorer, on token lists.

Per image the candidate's longest common subsequence (LCS) with each reference
gives a precision and a recall; the best precision and the best recall (possibly
from different references) combine into an F-measure with beta = 1.2, and the
corpus score is the plain mean over images. An empty candidate scores 0; the COCO
toolkit splits "" into one empty token, which gives a different score only when a
reference is empty as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from vicap_jobs.errors import InputError

BETA = 1.2


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (one DP row kept at a time)."""
    if len(first) < len(second):
        first, second = second, first
    previous = [0] * (len(second) + 1)
    for token in first:
        current = [0]
        for j, other in enumerate(second, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def sentence_rouge_l(candidate: Sequence[str], references: Sequence[Sequence[str]], beta: float = BETA) -> float:
    """ROUGE-L F-measure of one candidate: best precision and best recall over the references."""
    if not references:
        raise InputError("ROUGE-L needs at least one reference")
    best_precision = best_recall = 0.0
    for reference in references:
        common = lcs_length(reference, candidate)
        if candidate:
            best_precision = max(best_precision, common / float(len(candidate)))
        if reference:
            best_recall = max(best_recall, common / float(len(reference)))
    if best_precision == 0 or best_recall == 0:
        return 0.0
    return ((1 + beta**2) * best_precision * best_recall) / float(best_recall + beta**2 * best_precision)


def corpus_rouge_l(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]) -> float:
    """Mean per-image ROUGE-L of tokenized candidates against their tokenized references."""
    if len(candidates) != len(references):
        raise InputError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise InputError("ROUGE-L needs at least one candidate")
    scores = [sentence_rouge_l(candidate, refs) for candidate, refs in zip(candidates, references, strict=True)]
    return math.fsum(scores) / len(scores)
