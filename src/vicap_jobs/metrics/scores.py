"""Score predicted captions against reference captions: BLEU-1..4, ROUGE-L and CIDEr-D in one record.

This is the one entry point evaluators, jobs and reports call. Both sides go
through `vicap_jobs.data.text.tokenize` with a tokenization the caller must name,
because syllable and word scores differ by several points and must never be
compared with each other. Key mismatches are errors rather than silently dropped
images, since scoring a subset inflates or deflates the numbers unnoticed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from vicap_jobs.data.text import Tokenization, check_tokenization, segmentation_of, tokenize
from vicap_jobs.errors import InputError
from vicap_jobs.metrics.bleu import corpus_bleu
from vicap_jobs.metrics.cider import corpus_cider_d
from vicap_jobs.metrics.rouge import corpus_rouge_l

K = TypeVar("K", bound=Hashable)

_SHOWN_KEYS = 5  # how many offending image keys an error message lists


@dataclass(frozen=True)
class CaptionScores:
    """Corpus scores, with how many images and which tokenization produced them.

    BLEU and ROUGE-L are on a 0..1 scale; CIDEr-D on pycocoevalcap's ×10 scale (0..10,
    typically 0..2), so it is not a percentage. ``cider_d`` is None only for scores
    read back from evaluations stored before CIDEr-D was computed.
    """

    bleu_1: float
    bleu_2: float
    bleu_3: float
    bleu_4: float
    rouge_l: float
    n_images: int
    tokenization: str
    cider_d: float | None = None

    def as_percent(self) -> dict[str, float]:
        """BLEU-1..4 and ROUGE-L on the 0..100 scale papers report, keyed by field name (CIDEr-D is not a percentage)."""
        metrics = {
            "bleu_1": self.bleu_1,
            "bleu_2": self.bleu_2,
            "bleu_3": self.bleu_3,
            "bleu_4": self.bleu_4,
            "rouge_l": self.rouge_l,
        }
        return {name: 100.0 * value for name, value in metrics.items()}


def _sample(keys: Sequence[object]) -> str:
    """A short, readable list of keys for error messages."""
    shown = ", ".join(repr(key) for key in keys[:_SHOWN_KEYS])
    return shown + (", ..." if len(keys) > _SHOWN_KEYS else "")


def _scored_keys(predictions: Mapping[K, str], references: Mapping[K, Sequence[str]], allow_missing: bool) -> list[K]:
    """The image keys to score, in prediction order; raise InputError on any mismatch."""
    if not predictions:
        raise InputError("no predictions to score")
    unknown = [key for key in predictions if key not in references]
    if unknown:
        raise InputError(f"{len(unknown)} predicted images have no references: {_sample(unknown)}")
    missing = [key for key in references if key not in predictions]
    if missing and not allow_missing:
        raise InputError(
            f"{len(missing)} images have references but no prediction: {_sample(missing)} "
            "(to score only the predicted images, allow missing ones: --allow-missing)"
        )
    for key in predictions:
        refs = references[key]
        if isinstance(refs, str) or len(refs) == 0:
            raise InputError(f"image {key!r} needs a non-empty list of reference captions")
    return list(predictions)


def score_captions(
    predictions: Mapping[K, str],
    references: Mapping[K, Sequence[str]],
    *,
    tokenization: Tokenization,
    allow_missing: bool = False,
) -> CaptionScores:
    """Corpus BLEU-1..4, ROUGE-L and CIDEr-D of one predicted caption per image against its references.

    CIDEr-D takes its document frequencies from the references of the scored images,
    as pycocoevalcap does, so scoring a subset changes every image's weights.

    Every predicted image must have references; images with references but no
    prediction are an error unless `allow_missing`, which scores the intersection.
    """
    tokenization = check_tokenization(tokenization)
    keys = _scored_keys(predictions, references, allow_missing)
    # per call only: a constant prediction is tokenized once; keyed by the segmentation too, since a
    # reference with the data set's own segmentation tokenizes apart from equal plain text
    tokens_of: dict[tuple[str, str | None], list[str]] = {}

    def tokens(text: str) -> list[str]:
        key = (text, segmentation_of(text))
        if key not in tokens_of:
            tokens_of[key] = tokenize(text, tokenization)
        return tokens_of[key]

    candidates = [tokens(predictions[key]) for key in keys]
    reference_tokens = [[tokens(reference) for reference in references[key]] for key in keys]
    bleu_1, bleu_2, bleu_3, bleu_4 = corpus_bleu(candidates, reference_tokens)
    return CaptionScores(
        bleu_1=bleu_1,
        bleu_2=bleu_2,
        bleu_3=bleu_3,
        bleu_4=bleu_4,
        rouge_l=corpus_rouge_l(candidates, reference_tokens),
        n_images=len(keys),
        tokenization=tokenization,
        cider_d=corpus_cider_d(candidates, reference_tokens)[0],
    )
