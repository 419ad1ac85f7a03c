"""CIDEr-D computed exactly as pycocoevalcap's `Cider` (the COCO caption evaluation), quirks included.

Every n-gram (n = 1..4) of a sentence is weighted by tf-idf: its count times
``log(N) - log(max(1, df))``, where N is the number of images in the reference set
and df the number of images whose references contain the n-gram. Per order n the
candidate and each reference vector are compared by a cosine in which the candidate
weight is clipped by the reference weight, times a Gaussian length penalty
``exp(-delta² / (2 σ²))`` with σ = 6; the image score is the mean over n, averaged
over the references, times 10. Like pycocoevalcap, "length" is the number of bigrams
(``max(0, tokens - 1)``), and a reference set of one image gives every weight 0 and
so every score 0. The corpus score is the mean of the image scores.

`CiderD` holds the document frequencies of one reference set and, per image, the
reference vectors once built, so self-critical training can score many sampled
captions of an image against its references in one vectorized call.
Tokens are whatever `vicap_jobs.data.text.tokenize` produced (any hashable works,
e.g. vocabulary ids).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from vicap_jobs.errors import InputError

MAX_N = 4
SIGMA = 6.0
SCALE = 10.0  # pycocoevalcap multiplies every image score by 10

K = TypeVar("K", bound=Hashable)

FloatArray = npt.NDArray[np.float64]
NGram = tuple[Hashable, ...]


def ngram_counts(tokens: Sequence[Hashable], max_n: int = MAX_N) -> Counter[NGram]:
    """Count every n-gram of `tokens` for n = 1..max_n."""
    counts: Counter[NGram] = Counter()
    for n in range(1, max_n + 1):
        counts.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return counts


def _bigram_length(tokens: Sequence[Hashable]) -> int:
    """pycocoevalcap's sentence "length" for the penalty: it counts the bigrams, not the tokens."""
    return max(0, len(tokens) - 1)


def document_frequencies(references: Iterable[Sequence[Sequence[Hashable]]], max_n: int = MAX_N) -> Counter[NGram]:
    """For each n-gram, the number of images (reference lists) in which any reference contains it."""
    frequencies: Counter[NGram] = Counter()
    for refs in references:
        frequencies.update({ngram for ref in refs for ngram in ngram_counts(ref, max_n)})
    return frequencies


@dataclass(frozen=True)
class _ImageReferences:
    """One image's references as tf-idf rows over their own n-gram vocabulary."""

    columns: dict[NGram, int]  # n-gram -> column of `weights`
    weights: FloatArray  # (M, V) tf-idf weight of each reference n-gram
    orders: FloatArray  # (V, max_n) one-hot n-gram order of each column
    norms: FloatArray  # (M, max_n) Euclidean norm per order
    lengths: FloatArray  # (M,) bigram lengths


class CiderD(Generic[K]):
    """CIDEr-D against one reference set: document frequencies computed once, per-image vectors cached.

    ``references`` maps an image key to its tokenized reference captions; the df
    and ``log(N)`` come from all of them, as pycocoevalcap takes them from the
    evaluated images. For training rewards build one instance on the training set
    and call `score` per image; the per-image cache grows to every image scored.
    """

    def __init__(
        self, references: Mapping[K, Sequence[Sequence[Hashable]]], *, max_n: int = MAX_N, sigma: float = SIGMA
    ) -> None:
        if not references:
            raise InputError("CIDEr-D needs at least one image with references")
        for key, refs in references.items():
            if isinstance(refs, str) or len(refs) == 0:
                raise InputError(f"image {key!r} needs a non-empty list of reference captions")
        self.max_n = max_n
        self.sigma = sigma
        self._references = references
        self._frequencies = document_frequencies(references.values(), max_n)
        self._log_images = math.log(float(len(references)))
        self._images: dict[K, _ImageReferences] = {}

    def __len__(self) -> int:
        """Number of images in the reference set (N of the idf)."""
        return len(self._references)

    def _idf(self, ngram: NGram) -> float:
        return self._log_images - math.log(max(1.0, float(self._frequencies.get(ngram, 0))))

    def _image(self, key: K) -> _ImageReferences:
        """The cached tf-idf rows of image `key`'s references, built on first use."""
        cached = self._images.get(key)
        if cached is not None:
            return cached
        try:
            refs = self._references[key]
        except KeyError:
            raise InputError(f"image {key!r} is not in the reference set") from None
        counts = [ngram_counts(ref, self.max_n) for ref in refs]
        columns: dict[NGram, int] = {}
        for ref_counts in counts:
            for ngram in ref_counts:
                columns.setdefault(ngram, len(columns))
        weights = np.zeros((len(refs), len(columns)))
        for row, ref_counts in enumerate(counts):
            for ngram, count in ref_counts.items():
                weights[row, columns[ngram]] = count * self._idf(ngram)
        orders = np.zeros((len(columns), self.max_n))
        orders[np.arange(len(columns)), [len(ngram) - 1 for ngram in columns]] = 1.0
        image = _ImageReferences(
            columns=columns,
            weights=weights,
            orders=orders,
            norms=np.sqrt((weights**2) @ orders),
            lengths=np.array([_bigram_length(ref) for ref in refs], dtype=np.float64),
        )
        self._images[key] = image
        return image

    def score(self, key: K, candidates: Sequence[Sequence[Hashable]]) -> FloatArray:
        """CIDEr-D of several candidate captions of image `key` against its references, shape (C,)."""
        image = self._image(key)
        n_candidates = len(candidates)
        matched = np.zeros((n_candidates, len(image.columns)))  # (C, V) candidate weights on reference n-grams
        norms = np.zeros((n_candidates, self.max_n))  # (C, n) over all candidate n-grams
        for row, candidate in enumerate(candidates):
            for ngram, count in ngram_counts(candidate, self.max_n).items():
                weight = count * self._idf(ngram)
                norms[row, len(ngram) - 1] += weight * weight
                column = image.columns.get(ngram)
                if column is not None:
                    matched[row, column] = weight
        norms = np.sqrt(norms)
        refs = image.weights[None, :, :]  # (1, M, V)
        overlap = (np.minimum(matched[:, None, :], refs) * refs) @ image.orders  # (C, M, n), clipped dot products
        denominator = norms[:, None, :] * image.norms[None, :, :]  # (C, M, n)
        cosine = np.divide(overlap, denominator, out=overlap.copy(), where=denominator != 0)
        lengths = np.array([_bigram_length(candidate) for candidate in candidates], dtype=np.float64)
        delta = lengths[:, None] - image.lengths[None, :]  # (C, M)
        penalty = np.exp(-(delta**2) / (2 * self.sigma**2))
        per_reference = cosine * penalty[:, :, None]  # (C, M, n)
        return SCALE * per_reference.sum(axis=1).mean(axis=1) / len(image.lengths)

    def score_one(self, key: K, candidate: Sequence[Hashable]) -> float:
        """CIDEr-D of one candidate caption of image `key`."""
        return float(self.score(key, [candidate])[0])

    def corpus(self, candidates: Mapping[K, Sequence[Hashable]]) -> tuple[float, dict[K, float]]:
        """Mean CIDEr-D over the images of `candidates` (one caption each) and the score of every image."""
        if not candidates:
            raise InputError("CIDEr-D needs at least one candidate")
        per_image = {key: self.score_one(key, candidate) for key, candidate in candidates.items()}
        return float(np.mean(list(per_image.values()))), per_image


def corpus_cider_d(
    candidates: Sequence[Sequence[Hashable]], references: Sequence[Sequence[Sequence[Hashable]]]
) -> tuple[float, list[float]]:
    """Corpus CIDEr-D (mean over images) and per-image scores; df from these references, as pycocoevalcap."""
    if len(candidates) != len(references):
        raise InputError(f"{len(candidates)} candidates but {len(references)} reference lists")
    scorer = CiderD(dict(enumerate(references)))
    mean, per_image = scorer.corpus(dict(enumerate(candidates)))
    return mean, [per_image[index] for index in range(len(candidates))]
