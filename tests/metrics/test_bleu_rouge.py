"""BLEU and ROUGE-L parity with pycocoevalcap (the oracle), hand-checked cases and scoring errors."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from tests.metrics.coco_oracle import CocoScores, coco_scores
from vicap_jobs.data.text import Tokenization, detokenize, tokenize
from vicap_jobs.errors import InputError, UnknownNameError
from vicap_jobs.metrics.bleu import BleuCounts, closest_reference_length, corpus_bleu, sentence_counts
from vicap_jobs.metrics.rouge import corpus_rouge_l, lcs_length, sentence_rouge_l
from vicap_jobs.metrics.scores import CaptionScores, score_captions

TOLERANCE = 1e-6


def _references(folder: Path, split: str) -> dict[int, list[str]]:
    """Raw captions per image of one UIT-ViIC split (folder: the `uitviic_dir` fixture)."""
    path = folder / f"uitviic_captions_{split}2017.json"
    references: dict[int, list[str]] = {}
    for entry in json.loads(path.read_text(encoding="utf-8"))["annotations"]:
        references.setdefault(entry["image_id"], []).append(entry["caption"])
    return references


def _oracle(
    candidates: dict[int, str], references: dict[int, list[str]], tokenization: Tokenization = "syllable"
) -> CocoScores:
    """pycocoevalcap's scores of raw captions, tokenized as `score_captions` tokenizes them."""
    return coco_scores(
        {key: tokenize(text, tokenization) for key, text in candidates.items()},
        {key: [tokenize(text, tokenization) for text in refs] for key, refs in references.items()},
    )


def _assert_parity(scores: CaptionScores, oracle: CocoScores) -> None:
    ours = [scores.bleu_1, scores.bleu_2, scores.bleu_3, scores.bleu_4]
    assert ours == pytest.approx(oracle.bleu, abs=TOLERANCE, rel=0)
    assert scores.rouge_l == pytest.approx(oracle.rouge_l, abs=TOLERANCE, rel=0)


@pytest.mark.parametrize(
    ("split", "tokenization"),
    [("train", "syllable"), ("val", "syllable"), ("test", "syllable"), ("test", "word")],
)
def test_parity_with_pycocoevalcap_leave_one_reference_out(
    uitviic_dir: Path, split: str, tokenization: Tokenization
) -> None:
    captions = {key: refs for key, refs in _references(uitviic_dir, split).items() if len(refs) >= 2}
    predictions = {key: refs[0] for key, refs in captions.items()}
    held_out = {key: refs[1:] for key, refs in captions.items()}
    scores = score_captions(predictions, held_out, tokenization=tokenization)
    _assert_parity(scores, _oracle(predictions, held_out, tokenization))
    assert scores.n_images == len(captions) > 200
    assert scores.tokenization == tokenization
    print(f"\n{split}/{tokenization} leave-one-out: {scores.as_percent()}")


def test_parity_on_random_repetitive_corpus() -> None:
    """Few distinct tokens: many repeated n-grams (clipping) and equal-distance reference lengths (ties)."""
    rng = random.Random(7)
    vocabulary = ["a", "b", "c", "d"]
    candidates, references = {}, {}
    for key in range(300):
        candidates[key] = " ".join(rng.choices(vocabulary, k=rng.randint(1, 9)))
        references[key] = [" ".join(rng.choices(vocabulary, k=rng.randint(1, 9))) for _ in range(rng.randint(1, 4))]
    scores = score_captions(candidates, references, tokenization="syllable")
    _assert_parity(scores, _oracle(candidates, references))


def _median_reference_length_minus_one(tokens: list[str], references: list[list[str]]) -> list[str]:
    lengths = sorted(len(reference) for reference in references)
    return tokens[: lengths[len(lengths) // 2] - 1]


SHORTENINGS = {
    # Far shorter than every reference: a strong brevity penalty. The closest reference is then
    # always the shortest one, so this case alone cannot tell "closest" from "shortest".
    "three tokens": lambda tokens, references: tokens[:3],
    # Between the reference lengths: the penalty is active and depends on which length is used.
    "median reference length - 1": _median_reference_length_minus_one,
}


@pytest.mark.parametrize("shortening", list(SHORTENINGS))
@pytest.mark.parametrize(("split", "tokenization"), [("test", "syllable"), ("test", "word"), ("val", "syllable")])
def test_parity_with_pycocoevalcap_when_candidates_are_shorter_than_references(
    uitviic_dir: Path, split: str, tokenization: Tokenization, shortening: str
) -> None:
    """The brevity penalty compared with pycocoevalcap: every parity corpus above has long candidates."""
    captions = {key: refs for key, refs in _references(uitviic_dir, split).items() if len(refs) >= 2}
    held_out = {key: refs[1:] for key, refs in captions.items()}
    predictions = {
        key: detokenize(
            SHORTENINGS[shortening](
                tokenize(refs[0], tokenization), [tokenize(ref, tokenization) for ref in held_out[key]]
            )
        )
        for key, refs in captions.items()
    }
    oracle = _oracle(predictions, held_out, tokenization)
    assert oracle.candidate_length < oracle.reference_length  # the brevity penalty is active
    if shortening != "three tokens":  # and this one must separate the reference-length rules
        shortest = coco_scores(
            {key: tokenize(text, tokenization) for key, text in predictions.items()},
            {key: [tokenize(text, tokenization) for text in refs] for key, refs in held_out.items()},
            reference_length="shortest",
        )
        assert abs(shortest.bleu[3] - oracle.bleu[3]) > 1e-3
    _assert_parity(score_captions(predictions, held_out, tokenization=tokenization), oracle)


def test_identical_captions_score_one() -> None:
    tokens = ["một", "con", "chó", "đang", "chạy", "trên", "cỏ"]
    bleu = corpus_bleu([tokens], [[tokens]])
    assert bleu == pytest.approx((1.0, 1.0, 1.0, 1.0), abs=1e-9)
    assert corpus_bleu([tokens], [[tokens]], max_n=6) == pytest.approx((1.0,) * 6, abs=1e-9)  # 5- and 6-grams too
    assert corpus_rouge_l([tokens], [[tokens]]) == pytest.approx(1.0)


def test_disjoint_captions_score_about_zero() -> None:
    bleu = corpus_bleu([["một", "con", "chó"]], [[["hai", "chiếc", "xe", "buýt"]]])
    assert max(bleu) < 1e-6
    assert corpus_rouge_l([["một", "con", "chó"]], [[["hai", "chiếc", "xe"]]]) == 0.0


def test_hand_checked_bleu_counts() -> None:
    # Candidate "a a b c" against "a b c d": unigrams clipped to 3/4, bigrams 2/3, trigram 1/2, 4-gram 0/1;
    # equal lengths, so no brevity penalty.
    bleu = corpus_bleu([["a", "a", "b", "c"]], [[["a", "b", "c", "d"]]])
    assert bleu[0] == pytest.approx(3 / 4)
    assert bleu[1] == pytest.approx((3 / 4 * 2 / 3) ** 0.5)
    assert bleu[2] == pytest.approx((3 / 4 * 2 / 3 * 1 / 2) ** (1 / 3))
    assert bleu[3] < 1e-3


def test_sentence_counts_by_hand() -> None:
    # "a a b c" against "a b c d" and "a a": unigram a is clipped by the largest count in ONE
    # reference (2, from "a a"); bigrams aa, ab, bc match; trigram abc; no 4-gram.
    candidate, references = ["a", "a", "b", "c"], [["a", "b", "c", "d"], ["a", "a"]]
    assert sentence_counts(candidate, references) == BleuCounts(
        max_n=4, candidate_length=4, reference_length=4, guessed=[4, 3, 2, 1], matched=[4, 3, 1, 0]
    )
    assert sentence_counts(candidate, references, max_n=2) == BleuCounts(
        max_n=2, candidate_length=4, reference_length=4, guessed=[4, 3], matched=[4, 3]
    )
    assert corpus_bleu([candidate], [references], max_n=2) == pytest.approx((1.0, 1.0))


def test_closest_reference_length_prefers_shorter_on_tie() -> None:
    # Candidate length 4 against 1, 3, 5, 8: closest with the shorter on a tie is 3, whereas
    # "shortest" gives 1, "longest" 8 and "closest, longer on a tie" 5; in any order.
    for lengths in ([1, 3, 5, 8], [8, 5, 3, 1], [5, 8, 1, 3]):
        assert closest_reference_length(4, lengths) == 3
    assert closest_reference_length(4, [5, 3]) == closest_reference_length(4, [3, 5]) == 3
    assert closest_reference_length(4, [9, 6, 2]) == 2  # nearest wins over shorter or longer
    assert closest_reference_length(4, [7, 4, 1]) == 4


def test_brevity_penalty_uses_the_closest_reference_length_shorter_on_tie() -> None:
    # Every n-gram of both candidates matches, so each BLEU-n is the brevity penalty alone:
    # candidate lengths 4 + 2 = 6 against reference lengths 3 (closest to 4, shorter on the tie
    # 3 / 5) + 6 = 9. Shortest would give 1 + 6, longest 8 + 6, closest-longer 5 + 6.
    candidates = [["a", "b", "c", "d"], ["x", "y"]]
    references = [
        [["a"], ["a", "b", "c"], ["a", "b", "c", "d", "e"], ["a", "b", "c", "d", "e", "f", "g", "h"]],
        [["x", "y", "z", "w", "v", "u"]],
    ]
    expected = math.exp(1 - 9 / 6)
    assert corpus_bleu(candidates, references) == pytest.approx((expected,) * 4, rel=1e-9)
    oracle = coco_scores(dict(enumerate(candidates)), dict(enumerate(references)))
    assert oracle.bleu == pytest.approx((expected,) * 4, rel=1e-9)


def test_rouge_takes_best_precision_and_best_recall_from_different_references() -> None:
    candidate = ["a", "b", "c", "d"]
    # Against "a b": precision 2/4, recall 1. Against "a b c x y z": precision 3/4, recall 3/6.
    precision, recall = 3 / 4, 1.0
    expected = (1 + 1.2**2) * precision * recall / (recall + 1.2**2 * precision)
    assert sentence_rouge_l(candidate, [["a", "b"], ["a", "b", "c", "x", "y", "z"]]) == pytest.approx(expected)
    assert lcs_length(["a", "x", "b", "c"], ["a", "b", "y", "c"]) == 3
    assert sentence_rouge_l([], [["a"]]) == 0.0


def test_as_percent() -> None:
    scores = CaptionScores(0.5, 0.4, 0.3, 0.2, 0.25, n_images=3, tokenization="syllable")
    assert scores.as_percent() == pytest.approx({"bleu_1": 50, "bleu_2": 40, "bleu_3": 30, "bleu_4": 20, "rouge_l": 25})


def _message(call, *args, **kwargs) -> str:  # noqa: ANN001
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_score_captions_rejects_bad_input() -> None:
    references = {1: ["một con chó."], 2: ["hai con mèo."]}
    assert _message(score_captions, {}, references, tokenization="syllable") == "no predictions to score"
    assert (
        _message(score_captions, {1: "chó", 3: "mèo"}, references, tokenization="syllable")
        == "1 predicted images have no references: 3"
    )
    assert _message(score_captions, {1: "một con chó"}, references, tokenization="syllable") == (
        "1 images have references but no prediction: 2 "
        "(to score only the predicted images, allow missing ones: --allow-missing)"
    )
    assert (
        _message(score_captions, {1: "chó"}, {1: "một con chó"}, tokenization="syllable")
        == "image 1 needs a non-empty list of reference captions"
    )
    assert (
        _message(score_captions, {"a": "chó"}, {"a": []}, tokenization="syllable")
        == "image 'a' needs a non-empty list of reference captions"
    )
    with pytest.raises(UnknownNameError):
        score_captions({1: "chó"}, {1: ["chó"]}, tokenization="bpe")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        score_captions({1: "chó"}, {1: ["chó"]})  # type: ignore[call-arg]


def test_error_messages_list_at_most_five_keys() -> None:
    references = {f"img{i}": ["chó"] for i in range(7)}
    five = {f"new{i}": "chó" for i in range(5)}
    seven = {f"new{i}": "chó" for i in range(7)}
    assert (
        _message(score_captions, five, references, tokenization="syllable")
        == "5 predicted images have no references: 'new0', 'new1', 'new2', 'new3', 'new4'"
    )
    assert (
        _message(score_captions, seven, references, tokenization="syllable")
        == "7 predicted images have no references: 'new0', 'new1', 'new2', 'new3', 'new4', ..."
    )


def test_metric_functions_reject_mismatched_input() -> None:
    assert _message(corpus_bleu, [["a"], ["b"]], [[["a"]]]) == "2 candidates but 1 reference lists"
    assert _message(corpus_rouge_l, [["a"]], [[["a"]], [["b"]]]) == "1 candidates but 2 reference lists"
    assert _message(corpus_rouge_l, [], []) == "ROUGE-L needs at least one candidate"
    assert _message(sentence_rouge_l, ["a"], []) == "ROUGE-L needs at least one reference"


def test_allow_missing_scores_the_intersection() -> None:
    references = {1: ["Một con chó."], 2: ["Hai con mèo."]}
    scores = score_captions({1: "một con chó"}, references, tokenization="syllable", allow_missing=True)
    assert scores.n_images == 1
    assert scores.bleu_1 == pytest.approx(1.0)
    assert scores.rouge_l == pytest.approx(1.0)
