"""CIDEr-D parity with pycocoevalcap's `Cider` (the oracle), per-image and batched scores, hand-checked cases."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from vicap_jobs.data.text import SegmentedCaption, Tokenization, tokenize
from vicap_jobs.errors import InputError
from vicap_jobs.metrics.baseline import evaluate_constant
from vicap_jobs.metrics.cider import CiderD, corpus_cider_d, document_frequencies
from vicap_jobs.metrics.scores import score_captions

TOLERANCE = 1e-6


def _references(folder: Path, split: str) -> dict[int, list[str]]:
    """Raw captions per image of one UIT-ViIC split (folder: the `uitviic_dir` fixture)."""
    path = folder / f"uitviic_captions_{split}2017.json"
    references: dict[int, list[str]] = {}
    for entry in json.loads(path.read_text(encoding="utf-8"))["annotations"]:
        references.setdefault(entry["image_id"], []).append(entry["caption"])
    return references


def coco_cider(
    candidates: Mapping[Hashable, Sequence[str]], references: Mapping[Hashable, Sequence[Sequence[str]]]
) -> tuple[float, dict[Hashable, float]]:
    """pycocoevalcap's CIDEr-D of tokenized captions (joined by spaces, which it splits again) and per-image scores."""
    assert candidates.keys() == references.keys()
    score, per_image = Cider().compute_score(
        {key: [" ".join(ref) for ref in refs] for key, refs in references.items()},
        {key: [" ".join(candidate)] for key, candidate in candidates.items()},
    )
    return float(score), {key: float(value) for key, value in zip(references, per_image, strict=True)}


def _assert_parity(
    candidates: Mapping[Hashable, Sequence[str]], references: Mapping[Hashable, Sequence[Sequence[str]]]
) -> float:
    """Our corpus and per-image CIDEr-D equal the oracle's; return the largest absolute difference seen."""
    oracle, oracle_per_image = coco_cider(candidates, references)
    ours, per_image = CiderD(references).corpus(candidates)
    assert ours == pytest.approx(oracle, abs=TOLERANCE, rel=0)
    assert per_image.keys() == oracle_per_image.keys()
    differences = [abs(per_image[key] - oracle_per_image[key]) for key in per_image]
    assert max(differences) <= TOLERANCE
    return max([abs(ours - oracle), *differences])


@pytest.mark.parametrize(
    ("split", "tokenization"),
    [("train", "syllable"), ("val", "syllable"), ("test", "syllable"), ("test", "word")],
)
def test_parity_with_pycocoevalcap_leave_one_reference_out(
    uitviic_dir: Path, split: str, tokenization: Tokenization
) -> None:
    """First caption of each image scored against the others, on our tokens: corpus and every image within 1e-6."""
    captions = {key: refs for key, refs in _references(uitviic_dir, split).items() if len(refs) >= 2}
    predictions = {key: refs[0] for key, refs in captions.items()}
    held_out = {key: refs[1:] for key, refs in captions.items()}
    candidates = {key: tokenize(text, tokenization) for key, text in predictions.items()}
    references = {key: [tokenize(text, tokenization) for text in refs] for key, refs in held_out.items()}
    difference = _assert_parity(candidates, references)
    scores = score_captions(predictions, held_out, tokenization=tokenization)  # the stored path gives the same
    assert scores.cider_d == pytest.approx(coco_cider(candidates, references)[0], abs=TOLERANCE, rel=0)
    assert len(captions) > 200
    print(f"\n{split}/{tokenization} leave-one-out CIDEr-D {scores.cider_d:.4f}, max |ours - coco| {difference:.1e}")


def test_blind_baseline_cider_d_equals_pycocoevalcap(uitviic_dir: Path) -> None:
    """One constant caption for every UIT-ViIC test image, as the stored baseline is scored, against the oracle."""
    references = _references(uitviic_dir, "test")
    caption = "một người đàn ông đang chơi bóng chày ở trên sân"  # the blind baseline chosen on train
    scores = evaluate_constant(caption, references, tokenization="syllable")
    tokens = {key: [tokenize(ref) for ref in refs] for key, refs in references.items()}
    oracle, _ = coco_cider(dict.fromkeys(references, tokenize(caption)), tokens)
    assert scores.cider_d == pytest.approx(oracle, abs=TOLERANCE, rel=0)
    assert round(oracle, 2) == 0.54


def test_parity_on_random_repetitive_corpus() -> None:
    """Few distinct tokens: repeated n-grams (clipping), n-grams in every image (idf 0), 0- and 1-token sentences."""
    rng = random.Random(11)
    vocabulary = ["a", "b", "c", "d", "z"]

    def sentence() -> list[str]:
        return rng.choices(vocabulary, k=rng.randint(0, 9))

    candidates = {key: sentence() for key in range(300)}
    # "z" in a reference of every image: idf 0; image 0 has a reference of "z" alone (a zero norm)
    references = {key: [[*sentence(), "z"], *(sentence() for _ in range(rng.randint(0, 3)))] for key in range(300)}
    references[0].append(["z"])
    assert any(not c for c in candidates.values()) and any(len(c) == 1 for c in candidates.values())
    assert document_frequencies(references.values())[("z",)] == len(references)
    _assert_parity(candidates, references)


def test_batched_scores_equal_single_scores_and_the_oracle(uitviic_dir: Path) -> None:
    """Several sampled candidates of one image, scored in one call, equal pycocoevalcap with each candidate in turn."""
    captions = {key: refs for key, refs in _references(uitviic_dir, "test").items() if len(refs) >= 2}
    keys = list(captions)[:4]  # each sample costs one oracle run over the split
    references = {key: [tokenize(text) for text in refs[1:]] for key, refs in captions.items()}
    scorer = CiderD(references)
    rng = random.Random(3)
    pool = [tokenize(refs[0]) for refs in captions.values()]
    for key in keys:
        samples = [tokenize(captions[key][0]), [], *rng.sample(pool, 6)]
        samples.append(rng.sample(samples[0], len(samples[0])))  # the right words, shuffled
        batched = scorer.score(key, samples)
        assert batched.shape == (len(samples),)
        assert batched == pytest.approx([scorer.score_one(key, sample) for sample in samples], abs=1e-12, rel=0)
        for sample, score in zip(samples, batched, strict=True):
            others = {other: pool[i] for i, other in enumerate(captions)}
            others[key] = sample
            assert score == pytest.approx(coco_cider(others, references)[1][key], abs=TOLERANCE, rel=0)


def test_rewards_for_many_samples_are_cheap(uitviic_dir: Path) -> None:
    """16 samples per image for every UIT-ViIC test image, df and reference vectors cached: well under a second per pass."""
    references = {key: [tokenize(text) for text in refs] for key, refs in _references(uitviic_dir, "test").items()}
    scorer = CiderD(references)
    rng = random.Random(5)
    pool = [ref for refs in references.values() for ref in refs]
    samples = {key: rng.sample(pool, 16) for key in references}
    start = time.perf_counter()
    first = {key: scorer.score(key, batch) for key, batch in samples.items()}
    cold = time.perf_counter() - start
    start = time.perf_counter()
    second = {key: scorer.score(key, batch) for key, batch in samples.items()}
    warm = time.perf_counter() - start
    assert all(np.array_equal(first[key], second[key]) for key in samples)  # the cache changes nothing
    print(f"\nCIDEr-D rewards: {len(samples)} images × 16 samples in {cold:.3f} s cold, {warm:.3f} s cached")
    assert warm < 2.0, f"{warm:.2f} s for {len(samples)} images × 16 samples"


def test_identical_caption_scores_ten_when_its_ngrams_are_unique_to_its_image() -> None:
    """Every n-gram has df 1: the candidate's tf-idf vector is the reference's, cosine 1 per order, no penalty: 10."""
    dog = ["một", "con", "chó", "đang", "chạy", "trên", "cỏ"]
    references = {1: [dog], 2: [["hai", "chiếc", "xe", "buýt"]]}
    scorer = CiderD(references)
    assert scorer.score_one(1, dog) == pytest.approx(10.0, abs=1e-12)
    assert coco_cider({1: dog, 2: ["xe"]}, references)[1][1] == pytest.approx(10.0, abs=1e-12)
    # two words off at the end: fewer matching n-grams and a length penalty, but still the best of the three
    assert 0 < scorer.score_one(1, dog[:-2]) < scorer.score_one(1, dog) and scorer.score_one(1, ["xe"]) == 0.0


def test_length_penalty_counts_bigrams_as_pycocoevalcap() -> None:
    """Reference "a b c ... " of 14 tokens, candidate its first 2: cosine per order times exp(-(1 - 13)² / 72)."""
    reference = [f"w{i}" for i in range(14)]
    references = {1: [reference], 2: [["x"]]}
    candidate = reference[:2]
    # per order, a unique-n-gram cosine is sqrt(matches / reference n-grams): 2/14 unigrams, 1/13 bigrams, none above
    cosines = [math.sqrt(2 / 14), math.sqrt(1 / 13), 0.0, 0.0]
    expected = 10 * sum(cosines) / 4 * math.exp(-((1 - 13) ** 2) / (2 * 6.0**2))
    assert CiderD(references).score_one(1, candidate) == pytest.approx(expected, rel=1e-12)
    assert coco_cider({1: candidate, 2: ["x"]}, references)[1][1] == pytest.approx(expected, rel=1e-12)


def test_empty_candidate_scores_zero() -> None:
    references = {1: [["một", "con", "chó"]], 2: [["con", "mèo"]]}
    assert CiderD(references).score_one(1, []) == 0.0
    assert coco_cider({1: [], 2: ["con"]}, references)[1][1] == 0.0


def test_one_image_alone_scores_zero_as_in_pycocoevalcap() -> None:
    """With N = 1 every idf is log(1) - log(1) = 0, so even the reference itself scores 0, as in the oracle."""
    references = {7: [["một", "con", "chó"], ["con", "chó", "nhỏ"]]}
    assert CiderD(references).corpus({7: ["một", "con", "chó"]}) == (0.0, {7: 0.0})
    assert coco_cider({7: ["một", "con", "chó"]}, references) == (0.0, {7: 0.0})


def test_document_frequencies_count_images_not_references() -> None:
    references = [[["a", "b"], ["a", "b"], ["a"]], [["b", "a"]]]
    frequencies = document_frequencies(references)
    assert (frequencies[("a",)], frequencies[("b",)], frequencies[("a", "b")], frequencies[("b", "a")]) == (2, 2, 1, 1)


def test_tokens_may_be_vocabulary_ids() -> None:
    """Rewards during training score id sequences: the same numbers as the words they stand for."""
    words = {1: [["một", "con", "chó"], ["con", "chó"]], 2: [["hai", "con", "mèo"]], 3: [["xe", "buýt"]]}
    vocabulary = {
        word: index for index, word in enumerate(sorted({w for refs in words.values() for r in refs for w in r}))
    }
    ids = {key: [[vocabulary[w] for w in ref] for ref in refs] for key, refs in words.items()}
    candidate = ["con", "chó", "con", "mèo"]
    assert CiderD(ids).score_one(1, [vocabulary[w] for w in candidate]) == pytest.approx(
        CiderD(words).score_one(1, candidate), abs=1e-12
    )


def test_score_captions_uses_a_datasets_own_word_segmentation() -> None:
    """Word tokens of a `SegmentedCaption` come from its segmented form, and CIDEr-D is computed on those."""
    references = {
        1: [SegmentedCaption("Khung cảnh thành phố về đêm", "khung_cảnh thành_phố về đêm")],
        2: [SegmentedCaption("Một chiếc xe buýt", "một chiếc xe_buýt")],
    }
    predictions = {1: "khung cảnh thành phố", 2: "một chiếc xe"}
    scores = score_captions(predictions, references, tokenization="word")
    candidates = {key: tokenize(text, "word") for key, text in predictions.items()}
    segmented = {key: [tokenize(ref, "word") for ref in refs] for key, refs in references.items()}
    assert segmented[1] == [["khung_cảnh", "thành_phố", "về", "đêm"]]
    assert scores.cider_d == pytest.approx(coco_cider(candidates, segmented)[0], abs=TOLERANCE, rel=0)


def test_allow_missing_takes_document_frequencies_from_the_scored_images_only() -> None:
    """As pycocoevalcap given the same subset: N and df come from the predicted images, not the whole split."""
    references = {1: ["một con chó"], 2: ["một con mèo"], 3: ["hai con mèo"]}
    predictions = {1: "một con", 2: "con mèo"}  # "một con" occurs in every scored image, not in image 3
    scores = score_captions(predictions, references, tokenization="syllable", allow_missing=True)
    subset = {key: [tokenize(ref) for ref in references[key]] for key in predictions}
    oracle, _ = coco_cider({key: tokenize(text) for key, text in predictions.items()}, subset)
    assert scores.cider_d == pytest.approx(oracle, abs=TOLERANCE, rel=0)
    whole = CiderD({key: [tokenize(ref) for ref in refs] for key, refs in references.items()})
    assert CiderD(subset).score_one(1, tokenize("một con")) == 0.0 < 1.5 < whole.score_one(1, tokenize("một con"))


def test_bad_input_is_an_input_error() -> None:
    with pytest.raises(InputError, match="2 candidates but 1 reference lists"):
        corpus_cider_d([["a"], ["b"]], [[["a"]]])
    with pytest.raises(InputError, match="at least one image"):
        CiderD({})
    with pytest.raises(InputError, match="image 3 needs a non-empty list"):
        CiderD({1: [["a"]], 3: []})
    with pytest.raises(InputError, match="image 9 is not in the reference set"):
        CiderD({1: [["a"]]}).score(9, [["a"]])
    with pytest.raises(InputError, match="at least one candidate"):
        CiderD({1: [["a"]]}).corpus({})
