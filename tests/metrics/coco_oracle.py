"""pycocoevalcap, the toolkit our BLEU and ROUGE-L must match digit for digit, called on token lists.

The COCO scorers split space-joined strings themselves, so tokens must be
non-empty and free of spaces (what `vicap_jobs.data.text.tokenize` produces).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.rouge.rouge import Rouge


@dataclass(frozen=True)
class CocoScores:
    """Corpus BLEU-1..n and ROUGE-L from pycocoevalcap, with the lengths behind the brevity penalty."""

    bleu: tuple[float, ...]
    rouge_l: float
    candidate_length: int  # summed over the corpus
    reference_length: int  # summed effective reference lengths (per the length option)


def coco_scores(
    candidates: Mapping[Hashable, Sequence[str]],
    references: Mapping[Hashable, Sequence[Sequence[str]]],
    *,
    reference_length: Literal["closest", "shortest", "average"] = "closest",
    max_n: int = 4,
) -> CocoScores:
    """Score tokenized candidates as pycocoevalcap's `Bleu(max_n)` ("closest" is its choice) and `Rouge` do."""
    assert candidates.keys() == references.keys()
    scorer = BleuScorer(n=max_n)
    for key, candidate in candidates.items():
        scorer += (" ".join(candidate), [" ".join(reference) for reference in references[key]])
    bleu, _ = scorer.compute_score(option=reference_length, verbose=0)
    rouge, _ = Rouge().compute_score(
        {key: [" ".join(reference) for reference in refs] for key, refs in references.items()},
        {key: [" ".join(candidate)] for key, candidate in candidates.items()},
    )
    return CocoScores(
        bleu=tuple(bleu),
        rouge_l=float(rouge),
        candidate_length=scorer._testlen,
        reference_length=int(scorer._reflen),
    )
