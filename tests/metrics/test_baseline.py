"""Blind constant-caption baseline: fast BLEU-4 equals the full scorer; chosen on train; UIT-ViIC numbers."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tests.metrics.coco_oracle import coco_scores
from vicap_jobs.data.text import Tokenization, tokenize
from vicap_jobs.errors import InputError
from vicap_jobs.metrics.baseline import (
    BaselineChoice,
    choose_blind_baseline,
    constant_caption_bleu_4,
    evaluate_constant,
)
from vicap_jobs.metrics.scores import score_captions

# Repeated words, so constant captions hit clipping with multiplicities above one.
TINY_REFERENCES = {
    1: ["Một con chó, một con mèo.", "Con chó nằm cạnh con mèo"],
    2: ["Một con chó đang chạy.", "Chó chạy trên cỏ", "Một con chó nhỏ"],
    3: ["Hai con mèo đang ngủ.", "Mèo ngủ trên ghế"],
    4: ["Một người đàn ông đang chạy"],
}


# Train and test splits whose best constant captions differ ("một con chó đang chạy" on train,
# "hai con mèo đang ngủ trên ghế" on test), so choosing on the wrong split shows.
DOG_TRAIN = {
    1: ["Một con chó đang chạy trên cỏ.", "Con chó chạy trên bãi cỏ"],
    2: ["Một con chó đang nằm ngủ.", "Chó ngủ trên cỏ"],
    3: ["Một con mèo đang ngủ trên ghế"],
    4: ["Một con chó đang chạy.", "Hai con chó chơi đùa"],
}
CAT_TEST = {
    1: ["Hai con mèo đang ngủ trên ghế.", "Mèo ngủ trên ghế"],
    2: ["Hai con mèo đang nằm ngủ", "Con mèo đang ngủ"],
    3: ["Hai con mèo đang chơi trên ghế"],
}


def _references(folder: Path, split: str) -> dict[int, list[str]]:
    """Raw captions per image of one UIT-ViIC split (folder: the `uitviic_dir` fixture)."""
    path = folder / f"uitviic_captions_{split}2017.json"
    references: dict[int, list[str]] = {}
    for entry in json.loads(path.read_text(encoding="utf-8"))["annotations"]:
        references.setdefault(entry["image_id"], []).append(entry["caption"])
    return references


def _oracle_ranking(references: Mapping[int, Sequence[str]]) -> list[tuple[str, float, float]]:
    """Every distinct normalized caption as a constant prediction, scored by pycocoevalcap, best first.

    Best = highest BLEU-4, then highest ROUGE-L, then alphabetically first: the documented rule,
    computed without any of our scoring code.
    """
    tokenized = {key: [tokenize(text) for text in refs] for key, refs in references.items()}
    captions = {" ".join(tokens) for refs in tokenized.values() for tokens in refs if tokens}
    ranking = []
    for caption in captions:
        coco = coco_scores(dict.fromkeys(tokenized, caption.split()), tokenized)
        ranking.append((caption, coco.bleu[3], coco.rouge_l))
    return sorted(ranking, key=lambda row: (-row[1], -row[2], row[0]))


def _assert_fast_equals_full(references: dict[int, list[str]], captions: list[str], tokenization: Tokenization) -> None:
    fast = constant_caption_bleu_4(references, tokenization=tokenization)
    for caption in captions:
        full = score_captions(dict.fromkeys(references, caption), references, tokenization=tokenization)
        assert fast[caption] == pytest.approx(full.bleu_4, abs=1e-12, rel=1e-12), caption


@pytest.mark.parametrize("tokenization", ["syllable", "word"])
def test_fast_bleu_4_equals_full_scorer_on_tiny_corpus(tokenization: Tokenization) -> None:
    fast = constant_caption_bleu_4(TINY_REFERENCES, tokenization=tokenization)
    assert len(fast) == sum(len(refs) for refs in TINY_REFERENCES.values())  # all distinct here
    _assert_fast_equals_full(TINY_REFERENCES, list(fast), tokenization)


def test_choice_on_tiny_corpus_is_the_best_constant() -> None:
    choice = choose_blind_baseline(TINY_REFERENCES, tokenization="syllable")
    fast = constant_caption_bleu_4(TINY_REFERENCES, tokenization="syllable")
    assert choice.bleu_4 == max(fast.values())
    full = evaluate_constant(choice.caption, TINY_REFERENCES, tokenization="syllable")
    assert (choice.bleu_4, choice.rouge_l) == pytest.approx((full.bleu_4, full.rouge_l), abs=1e-12)


def test_ties_on_bleu_4_go_to_rouge_l() -> None:
    # Found by a seeded search: two captions tie exactly on BLEU-4; the alphabetically later one
    # has the higher ROUGE-L and must win.
    references = {0: ["c b c b", "c b"], 1: ["c c a c", "c a c a"], 2: ["b c b", "c c a b"]}
    fast = constant_caption_bleu_4(references, tokenization="syllable")
    assert fast["c b c b"] == fast["c c a b"] == max(fast.values())
    rouge = {caption: evaluate_constant(caption, references, tokenization="syllable").rouge_l for caption in fast}
    assert rouge["c c a b"] > rouge["c b c b"]
    choice = choose_blind_baseline(references, tokenization="syllable")
    assert choice.caption == "c c a b"
    assert choice.rouge_l == pytest.approx(rouge["c c a b"])


def test_choice_is_the_oracle_best_on_the_split_it_is_given() -> None:
    for references in (DOG_TRAIN, CAT_TEST, TINY_REFERENCES):
        (best, bleu_4, rouge_l), runner_up = _oracle_ranking(references)[:2]
        assert bleu_4 > runner_up[1] + 1e-6  # a clear winner, so the exact check is fair
        choice = choose_blind_baseline(references, tokenization="syllable")
        assert choice == BaselineChoice(caption=best, bleu_4=pytest.approx(bleu_4), rouge_l=pytest.approx(rouge_l))


def test_baseline_for_a_test_split_is_chosen_on_train() -> None:
    train_best = _oracle_ranking(DOG_TRAIN)[0][0]
    test_best = _oracle_ranking(CAT_TEST)[0][0]
    assert (train_best, test_best) == ("một con chó đang chạy", "hai con mèo đang ngủ trên ghế")
    choice = choose_blind_baseline(DOG_TRAIN, tokenization="syllable")
    assert choice.caption == train_best
    on_test = evaluate_constant(choice.caption, CAT_TEST, tokenization="syllable")
    tokenized_test = {key: [tokenize(text) for text in refs] for key, refs in CAT_TEST.items()}
    coco = coco_scores(dict.fromkeys(CAT_TEST, train_best.split()), tokenized_test)
    assert (on_test.bleu_4, on_test.rouge_l) == pytest.approx((coco.bleu[3], coco.rouge_l), abs=1e-9)
    assert on_test.n_images == len(CAT_TEST)
    # Peeking at the test split would have scored far better: the choice really came from train.
    assert evaluate_constant(test_best, CAT_TEST, tokenization="syllable").bleu_4 > on_test.bleu_4 + 0.1


@pytest.mark.parametrize(
    ("references", "message"),
    [
        ({}, "no reference captions given"),
        ({1: ["...", "!"]}, "every reference caption is empty after normalization"),
        ({1: ["một con chó"], 2: []}, "image 2 needs a non-empty list of reference captions"),
        ({1: "một con chó"}, "image 1 needs a non-empty list of reference captions"),  # a string is not a list
    ],
    ids=["no images", "all empty", "no references", "a string"],
)
def test_bad_input_is_rejected(references: dict[int, list[str]], message: str) -> None:
    for call in (choose_blind_baseline, constant_caption_bleu_4):
        with pytest.raises(InputError) as caught:
            call(references, tokenization="syllable")
        assert str(caught.value) == message


@pytest.fixture(scope="module")
def train_choice(uitviic_dir: Path) -> tuple[BaselineChoice, float]:
    train = _references(uitviic_dir, "train")
    start = time.perf_counter()
    choice = choose_blind_baseline(train, tokenization="syllable")
    return choice, time.perf_counter() - start


def test_fast_bleu_4_equals_full_scorer_on_uitviic_val(uitviic_dir: Path) -> None:
    val = _references(uitviic_dir, "val")
    fast = constant_caption_bleu_4(val, tokenization="syllable")
    ranked = sorted(fast, key=fast.__getitem__)
    picks = [ranked[0], ranked[len(ranked) // 3], ranked[len(ranked) // 2], ranked[-2], ranked[-1]]
    _assert_fast_equals_full(val, picks, "syllable")


# The README's numbers: on UIT-ViIC test the train-chosen caption scores BLEU-4 32.6, ROUGE-L 56.6.
README_BASELINE = "một người đàn ông đang chơi bóng chày ở trên sân"


def test_blind_baseline_on_uitviic_test(uitviic_dir: Path, train_choice: tuple[BaselineChoice, float]) -> None:
    choice, seconds = train_choice
    assert choice.caption == README_BASELINE
    test = _references(uitviic_dir, "test")
    scores = evaluate_constant(choice.caption, test, tokenization="syllable")
    print(
        f"\nblind baseline (chosen on UIT-ViIC train in {seconds:.1f} s): {choice.caption!r}"
        f"\n  train: BLEU-4 {choice.bleu_4:.4f}  ROUGE-L {choice.rouge_l:.4f}"
        f"\n  test:  BLEU-4 {scores.bleu_4:.4f}  ROUGE-L {scores.rouge_l:.4f}  (n_images={scores.n_images})"
    )
    assert scores.n_images == 231
    assert (round(100 * scores.bleu_4, 1), round(100 * scores.rouge_l, 1)) == (32.6, 56.6)
    tokenized = {key: [tokenize(text) for text in refs] for key, refs in test.items()}
    coco = coco_scores(dict.fromkeys(test, README_BASELINE.split()), tokenized)
    assert (scores.bleu_4, scores.rouge_l) == pytest.approx((coco.bleu[3], coco.rouge_l), abs=1e-9)
    # Chosen on test, the constant would be another caption: the assertion above tells the splits apart.
    assert choose_blind_baseline(test, tokenization="syllable").caption != README_BASELINE
    assert seconds < 30


def test_train_choice_matches_full_scorer(uitviic_dir: Path, train_choice: tuple[BaselineChoice, float]) -> None:
    choice, _ = train_choice
    full = evaluate_constant(choice.caption, _references(uitviic_dir, "train"), tokenization="syllable")
    assert choice.bleu_4 == pytest.approx(full.bleu_4, abs=1e-12)
    assert choice.rouge_l == pytest.approx(full.rouge_l, abs=1e-12)
