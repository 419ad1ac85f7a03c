"""BLEU and ROUGE-L parity with pycocoevalcap (the oracle), hand-checked cases and scoring errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.rouge.rouge import Rouge

from vicap_jobs.data.text import Tokenization, tokenize
from vicap_jobs.errors import InputError, UnknownNameError
from vicap_jobs.metrics.bleu import closest_reference_length, corpus_bleu
from vicap_jobs.metrics.rouge import corpus_rouge_l, lcs_length, sentence_rouge_l
from vicap_jobs.metrics.scores import CaptionScores, score_captions

UITVIIC_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/uitviic"
TOLERANCE = 1e-6


def _references(split: str) -> dict[int, list[str]]:
    """Raw captions per image of one UIT-ViIC split, or skip the test when the data set is absent."""
    path = UITVIIC_DIR / f"uitviic_captions_{split}2017.json"
    if not path.is_file():
        pytest.skip(f"UIT-ViIC not found at {path} (shared/ must sit next to the repository root)")
    references: dict[int, list[str]] = {}
    for entry in json.loads(path.read_text(encoding="utf-8"))["annotations"]:
        references.setdefault(entry["image_id"], []).append(entry["caption"])
    return references


def _oracle(candidates: dict[int, str], references: dict[int, list[str]]) -> tuple[list[float], float]:
    """BLEU-1..4 and ROUGE-L from pycocoevalcap on space-joined token strings."""
    gts = {key: list(refs) for key, refs in references.items()}
    res = {key: [candidate] for key, candidate in candidates.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    return list(bleu), float(rouge)


def _assert_parity(scores: CaptionScores, oracle_bleu: list[float], oracle_rouge: float) -> None:
    ours = [scores.bleu_1, scores.bleu_2, scores.bleu_3, scores.bleu_4]
    assert ours == pytest.approx(oracle_bleu, abs=TOLERANCE, rel=0)
    assert scores.rouge_l == pytest.approx(oracle_rouge, abs=TOLERANCE, rel=0)


@pytest.mark.parametrize(
    ("split", "tokenization"),
    [("train", "syllable"), ("val", "syllable"), ("test", "syllable"), ("test", "word")],
)
def test_parity_with_pycocoevalcap_leave_one_reference_out(split: str, tokenization: Tokenization) -> None:
    captions = {key: refs for key, refs in _references(split).items() if len(refs) >= 2}
    predictions = {key: refs[0] for key, refs in captions.items()}
    held_out = {key: refs[1:] for key, refs in captions.items()}
    scores = score_captions(predictions, held_out, tokenization=tokenization)

    def joined(text: str) -> str:
        return " ".join(tokenize(text, tokenization))

    oracle_bleu, oracle_rouge = _oracle(
        {key: joined(text) for key, text in predictions.items()},
        {key: [joined(text) for text in refs] for key, refs in held_out.items()},
    )
    _assert_parity(scores, oracle_bleu, oracle_rouge)
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
    _assert_parity(scores, *_oracle(candidates, references))


def test_identical_captions_score_one() -> None:
    tokens = ["một", "con", "chó", "đang", "chạy", "trên", "cỏ"]
    bleu = corpus_bleu([tokens], [[tokens]])
    assert bleu == pytest.approx((1.0, 1.0, 1.0, 1.0), abs=1e-9)
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


def test_closest_reference_length_prefers_shorter_on_tie() -> None:
    assert closest_reference_length(3, [4, 2]) == 2
    assert closest_reference_length(3, [5, 4, 1]) == 4
    # With the shorter reference chosen, a 3-token candidate has no brevity penalty.
    bleu = corpus_bleu([["a", "b", "c"]], [[["a", "b", "c", "d"], ["a", "b"]]])
    assert bleu[0] == pytest.approx(1.0)


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


def test_score_captions_rejects_bad_input() -> None:
    references = {1: ["một con chó."], 2: ["hai con mèo."]}
    with pytest.raises(InputError, match="no predictions"):
        score_captions({}, references, tokenization="syllable")
    with pytest.raises(InputError, match="no references"):
        score_captions({1: "chó", 3: "mèo"}, references, tokenization="syllable")
    with pytest.raises(InputError, match="allow-missing"):
        score_captions({1: "một con chó"}, references, tokenization="syllable")
    with pytest.raises(InputError, match="non-empty list"):
        score_captions({1: "chó"}, {1: "một con chó"}, tokenization="syllable")
    with pytest.raises(UnknownNameError):
        score_captions({1: "chó"}, {1: ["chó"]}, tokenization="bpe")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        score_captions({1: "chó"}, {1: ["chó"]})  # type: ignore[call-arg]


def test_allow_missing_scores_the_intersection() -> None:
    references = {1: ["Một con chó."], 2: ["Hai con mèo."]}
    scores = score_captions({1: "một con chó"}, references, tokenization="syllable", allow_missing=True)
    assert scores.n_images == 1
    assert scores.bleu_1 == pytest.approx(1.0)
    assert scores.rouge_l == pytest.approx(1.0)
