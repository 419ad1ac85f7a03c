"""Property tests against pycocoevalcap on random Vietnamese corpora: BLEU-1..4, ROUGE-L, the blind baseline.

Few distinct syllables per corpus, so n-grams repeat (clipping) and reference
lengths tie; candidates from empty to longer than every reference, so the brevity
penalty is on in about half the corpora. The example counts keep this file at a
few seconds.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.metrics.coco_oracle import coco_scores
from vicap_jobs.metrics.baseline import choose_blind_baseline, constant_caption_bleu_4
from vicap_jobs.metrics.bleu import corpus_bleu
from vicap_jobs.metrics.rouge import corpus_rouge_l
from vicap_jobs.metrics.scores import score_captions

SYLLABLES = ("một", "con", "chó", "mèo", "đang", "chạy", "trên", "cỏ", "người", "đàn", "ông", "bóng", "đá", "sân", "ở")
TOLERANCE = 1e-9
TIE = 1e-13  # float noise; the 1e-9 smoothing terms make real differences of about 1e-10
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Tokens = list[str]


@st.composite
def corpora(draw: st.DrawFn, max_images: int = 5) -> tuple[list[Tokens], list[list[Tokens]]]:
    """Candidates and their references over a vocabulary of 1-5 syllables (diacritics included)."""
    vocabulary = draw(st.lists(st.sampled_from(SYLLABLES), min_size=1, max_size=5, unique=True))
    syllable = st.sampled_from(vocabulary)
    n_images = draw(st.integers(1, max_images))
    references = [
        draw(st.lists(st.lists(syllable, min_size=1, max_size=9), min_size=1, max_size=4)) for _ in range(n_images)
    ]
    candidates = [draw(st.lists(syllable, min_size=0, max_size=11)) for _ in range(n_images)]
    return candidates, references


def _coco(candidates: list[Tokens], references: list[list[Tokens]], max_n: int = 4):  # noqa: ANN202
    return coco_scores(dict(enumerate(candidates)), dict(enumerate(references)), max_n=max_n)


@PROPERTY_SETTINGS
@given(corpora(), st.integers(1, 4))  # pycocoevalcap's references are counted up to 4-grams only
def test_bleu_and_rouge_equal_pycocoevalcap(corpus: tuple[list[Tokens], list[list[Tokens]]], max_n: int) -> None:
    candidates, references = corpus
    coco = _coco(candidates, references, max_n)
    event("brevity penalty on" if coco.candidate_length < coco.reference_length else "brevity penalty off")
    assert corpus_bleu(candidates, references, max_n) == pytest.approx(coco.bleu, abs=TOLERANCE, rel=0)
    assert corpus_rouge_l(candidates, references) == pytest.approx(coco.rouge_l, abs=TOLERANCE, rel=0)


@st.composite
def written(draw: st.DrawFn, tokens: Tokens) -> str:
    """Tokens as a person might type them: capitals, punctuation, NFD diacritics; normalizing undoes it."""
    words = [word.capitalize() if draw(st.booleans()) else word for word in tokens]
    text = " ".join(words) + draw(st.sampled_from(["", ".", " !", "…"]))
    return unicodedata.normalize("NFD", text) if draw(st.booleans()) else text


@PROPERTY_SETTINGS
@given(st.data())
def test_score_captions_equals_pycocoevalcap_on_raw_text(data: st.DataObject) -> None:
    candidates, references = data.draw(corpora())
    predictions = {key: data.draw(written(tokens)) for key, tokens in enumerate(candidates)}
    raw_references = {key: [data.draw(written(tokens)) for tokens in refs] for key, refs in enumerate(references)}
    scores = score_captions(predictions, raw_references, tokenization="syllable")
    coco = _coco(candidates, references)
    ours = (scores.bleu_1, scores.bleu_2, scores.bleu_3, scores.bleu_4)
    assert ours == pytest.approx(coco.bleu, abs=TOLERANCE, rel=0)
    assert scores.rouge_l == pytest.approx(coco.rouge_l, abs=TOLERANCE, rel=0)
    assert (scores.n_images, scores.tokenization) == (len(candidates), "syllable")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora(max_images=4))
def test_blind_baseline_is_the_best_constant_by_pycocoevalcap(corpus: tuple[list[Tokens], list[list[Tokens]]]) -> None:
    _, references = corpus
    raw = {key: [" ".join(tokens) for tokens in refs] for key, refs in enumerate(references)}
    oracle = {}
    for caption in {text for refs in raw.values() for text in refs}:
        coco = _coco([caption.split()] * len(references), references)
        oracle[caption] = (coco.bleu[3], coco.rouge_l)
    fast = constant_caption_bleu_4(raw, tokenization="syllable")
    assert fast.keys() == oracle.keys()
    for caption, (bleu_4, _) in oracle.items():
        assert fast[caption] == pytest.approx(bleu_4, abs=TOLERANCE, rel=0), caption
    choice = choose_blind_baseline(raw, tokenization="syllable")
    best_bleu = max(bleu for bleu, _ in oracle.values())
    tied = {caption: rouge for caption, (bleu, rouge) in oracle.items() if bleu > best_bleu - TIE}
    assert choice.caption in tied  # the best BLEU-4 ...
    assert choice.rouge_l == pytest.approx(max(tied.values()), abs=TIE)  # ... and of those the best ROUGE-L
    assert (choice.bleu_4, choice.rouge_l) == pytest.approx(oracle[choice.caption], abs=TIE)
    exact_ties = [caption for caption, rouge in tied.items() if rouge > max(tied.values()) - TIE]
    assert choice.caption == min(exact_ties)  # then the alphabetically first
