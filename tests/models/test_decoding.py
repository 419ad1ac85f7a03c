"""Greedy and beam search on hand-built step functions, against a brute-force oracle, and on tiny real models."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vicap_jobs.errors import InputError
from vicap_jobs.models.decoding import (
    beam_search,
    greedy_decode,
    length_penalty_factor,
    sample_decode,
    sampled_captions,
)
from vicap_jobs.models.registry import get_family

BOS, EOS = 1, 2


def table_step(table: dict[int, dict[int, float]], vocab: int = 8):  # noqa: ANN201
    """A step function whose next-token probabilities depend only on the token fed in.

    The state holds the token fed at the previous step (-1 before BOS); each
    fed token must be a possible successor of it, so beams whose state rows
    were not reordered with them trip the assertion.
    """

    def step(tokens: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        (previous,) = state
        logits = torch.full((tokens.shape[0], vocab), -math.inf)  # impossible tokens are never chosen
        for row, (token, before) in enumerate(zip(tokens.tolist(), previous.tolist(), strict=True)):
            if token != EOS:  # EOS: a placeholder row of a finished image
                assert (before == -1 and token == BOS) or table.get(before, {}).get(token, 0) > 0, "state not reordered"
            for nxt, prob in table.get(token, {EOS: 1.0}).items():
                logits[row, nxt] = math.log(prob)
        return logits, (tokens.clone(),)

    return step


def start_state(batch: int) -> tuple[torch.Tensor]:
    return (torch.full((batch,), -1, dtype=torch.long),)


def sequence_log_prob(table: dict[int, dict[int, float]], ids: list[int]) -> float:
    total, previous = 0.0, BOS
    for token in [*ids, EOS]:
        total += math.log(table.get(previous, {EOS: 1.0})[token])
        previous = token
    return total


# Greedy takes 3 (0.6) and then faces a nearly flat distribution; 4 (0.4) leads to EOS with certainty.
MYOPIC = {
    BOS: {3: 0.6, 4: 0.4},
    3: {5: 0.3, 6: 0.25, 7: 0.25, EOS: 0.2},
    4: {EOS: 1.0},
    5: {EOS: 1.0},
    6: {EOS: 1.0},
    7: {EOS: 1.0},
}


def test_greedy_follows_the_argmax_and_strips_eos() -> None:
    out = greedy_decode(table_step(MYOPIC), start_state(2), batch_size=2, bos_id=BOS, eos_id=EOS, max_len=10)
    assert out[0] == out[1] and out[0][0] == 3 and EOS not in out[0] and len(out[0]) == 2


def test_max_len_caps_the_generated_tokens() -> None:
    loop = {BOS: {3: 1.0}, 3: {3: 0.9, EOS: 0.1}}
    assert greedy_decode(table_step(loop), start_state(1), batch_size=1, bos_id=BOS, eos_id=EOS, max_len=4) == [
        [3, 3, 3, 3]
    ]
    # Cut at 4 tokens, [3, 3, 3, 3] has log-probability 3·log 0.9 ≈ -0.32; every caption that ends in EOS
    # pays log 0.1 ≈ -2.3. Sequences cut at max_len compete as they are, so the cut one wins.
    beams = beam_search(table_step(loop), start_state(1), batch_size=1, beam_size=2, max_len=4, bos_id=BOS, eos_id=EOS)
    assert beams == [[3, 3, 3, 3]]


def test_beam_search_beats_myopic_greedy() -> None:
    step = table_step(MYOPIC)
    greedy = greedy_decode(step, start_state(1), batch_size=1, bos_id=BOS, eos_id=EOS, max_len=5)[0]
    beam = beam_search(step, start_state(1), batch_size=1, beam_size=2, max_len=5, bos_id=BOS, eos_id=EOS)[0]
    assert beam == [4]
    assert sequence_log_prob(MYOPIC, beam) > sequence_log_prob(MYOPIC, greedy)


def test_length_penalty_favours_longer_captions() -> None:
    # [3] ends at once (p 0.5); [4, 5, 6] carries on with p 0.5 · 0.9 · 0.9 · 0.9.
    table = {
        BOS: {3: 0.5, 4: 0.5},
        3: {EOS: 1.0},
        4: {5: 0.9, EOS: 0.1},
        5: {6: 0.9, EOS: 0.1},
        6: {EOS: 0.9, 7: 0.1},
    }
    kwargs = {"batch_size": 1, "beam_size": 3, "max_len": 6, "bos_id": BOS, "eos_id": EOS}
    assert beam_search(table_step(table), start_state(1), length_penalty=0.0, **kwargs) == [[3]]
    assert beam_search(table_step(table), start_state(1), length_penalty=2.0, **kwargs) == [[4, 5, 6]]
    assert length_penalty_factor(7, 0.0) == 1.0 and length_penalty_factor(1, 1.0) == 1.0


# --------------------------------------------------------------------------- brute-force oracle


def oracle_hypotheses(table: dict[int, dict[int, float]], max_len: int, alpha: float) -> list[tuple[float, list[int]]]:
    """Every hypothesis beam search may return, scored as its docstring says, best first.

    A caption closed by EOS after n tokens (EOS counted) scores sum log p / ((5 + n) / 6) ** alpha;
    a caption still open after max_len tokens scores its log-probability so far over its own length.
    """
    hypotheses: list[tuple[float, list[int]]] = []

    def walk(prefix: list[int], previous: int, log_p: float) -> None:
        if len(prefix) == max_len:
            hypotheses.append((log_p / ((5 + len(prefix)) / 6) ** alpha, prefix))
            return
        for token, prob in table.get(previous, {EOS: 1.0}).items():
            if token == EOS:
                hypotheses.append(((log_p + math.log(prob)) / ((5 + len(prefix) + 1) / 6) ** alpha, prefix))
            else:
                walk([*prefix, token], token, log_p + math.log(prob))

    walk([], BOS, 0.0)
    return sorted(hypotheses, key=lambda hyp: hyp[0], reverse=True)


def exhaustive_beam(table: dict[int, dict[int, float]], max_len: int) -> int:
    """A beam size no pruning can bite: more than every hypothesis and every step's continuations."""
    return len(oracle_hypotheses(table, max_len, 0.0)) * (len(table) + 1)


def beam(table: dict[int, dict[int, float]], *, beam_size: int, max_len: int, alpha: float, batch: int = 1):  # noqa: ANN201
    return beam_search(
        table_step(table),
        start_state(batch),
        batch_size=batch,
        beam_size=beam_size,
        max_len=max_len,
        length_penalty=alpha,
        bos_id=BOS,
        eos_id=EOS,
    )


def test_oracle_scores_by_hand() -> None:
    table = {BOS: {3: 0.5, EOS: 0.5}, 3: {EOS: 0.25, 3: 0.75}}
    scores = {tuple(ids): score for score, ids in oracle_hypotheses(table, max_len=2, alpha=1.0)}
    assert scores == pytest.approx(
        {
            (): math.log(0.5) / 1.0,  # EOS only: n = 1, factor (5 + 1) / 6 = 1
            (3,): math.log(0.5 * 0.25) / (7 / 6),
            (3, 3): math.log(0.5 * 0.75) / (7 / 6),  # cut at max_len = 2 without EOS: n = 2
        }
    )


# Greedy misses the best caption (MYOPIC); short and long captions and loops compete (the other two).
ORACLE_TABLES = {
    "myopic": MYOPIC,
    "long detour": {
        BOS: {3: 0.45, 4: 0.35, EOS: 0.2},
        3: {5: 0.5, EOS: 0.3, 6: 0.2},
        4: {6: 0.9, EOS: 0.1},
        5: {EOS: 0.6, 3: 0.4},
        6: {7: 0.8, EOS: 0.2},
        7: {EOS: 0.7, 4: 0.3},
    },
    "loops": {BOS: {3: 0.6, 4: 0.4}, 3: {3: 0.5, 4: 0.3, EOS: 0.2}, 4: {3: 0.3, EOS: 0.7}},
}


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, 2.5])
@pytest.mark.parametrize("max_len", [1, 2, 3, 5])
@pytest.mark.parametrize("name", list(ORACLE_TABLES))
def test_exhaustive_beam_search_finds_the_oracle_best(name: str, max_len: int, alpha: float) -> None:
    table = ORACLE_TABLES[name]
    (best_score, best), (runner_up, _) = oracle_hypotheses(table, max_len, alpha)[:2]
    assert best_score - runner_up > 1e-4  # no near-tie that float32 might break the other way
    k = exhaustive_beam(table, max_len)
    assert beam(table, beam_size=k, max_len=max_len, alpha=alpha, batch=2) == [best, best]


# One closed caption is not enough to stop: the empty caption (p 0.55) closes first and, with alpha 2,
# [3, 4, 5, 6, 7] ((log 0.45 + 4 log 0.99) / (11/6)² ≈ -0.25) beats it (log 0.55 ≈ -0.60) once its
# length counts. Stopping as soon as ONE hypothesis is closed returns the empty caption.
ONE_IS_NOT_K = {
    BOS: {EOS: 0.55, 3: 0.45},
    3: {4: 0.99, EOS: 0.01},
    4: {5: 0.99, EOS: 0.01},
    5: {6: 0.99, EOS: 0.01},
    6: {7: 0.99, EOS: 0.01},
    7: {EOS: 1.0},
}


@pytest.mark.parametrize("beam_size", [2, 3])
def test_an_image_needs_k_closed_hypotheses_before_it_stops(beam_size: int) -> None:
    assert oracle_hypotheses(ONE_IS_NOT_K, 8, 2.0)[0][1] == [3, 4, 5, 6, 7]
    assert beam(ONE_IS_NOT_K, beam_size=beam_size, max_len=8, alpha=2.0) == [[3, 4, 5, 6, 7]]
    # Without a length penalty the empty caption is the best one, and beam search stops early on it.
    assert beam(ONE_IS_NOT_K, beam_size=beam_size, max_len=8, alpha=0.0) == [[]]


# EOS counts in the length. With alpha 1: [3] then EOS is log 0.4 / (7/6) ≈ -0.785 and [4, 5, 6] then
# EOS is log(0.6·0.9·0.9·0.62) / (9/6) ≈ -0.800, so [3] wins. Leaving EOS out of n gives
# -0.916 / 1 against -1.200 / (8/6) = -0.900 and the longer caption would win.
EOS_COUNTS = {
    BOS: {3: 0.4, 4: 0.6},
    3: {EOS: 1.0},
    4: {5: 0.9, EOS: 0.1},
    5: {6: 0.9, EOS: 0.1},
    6: {EOS: 0.62, 7: 0.38},
    7: {EOS: 1.0},
}


@pytest.mark.parametrize("beam_size", [2, 3, 8])
def test_closed_hypothesis_length_counts_eos(beam_size: int) -> None:
    assert oracle_hypotheses(EOS_COUNTS, 6, 1.0)[0][1] == [3]
    assert beam(EOS_COUNTS, beam_size=beam_size, max_len=6, alpha=1.0) == [[3]]


def weighted(rows: dict[int, dict[int, int]]) -> dict[int, dict[int, float]]:
    """A table from integer weights per row."""
    return {previous: {token: w / sum(row.values()) for token, w in row.items()} for previous, row in rows.items()}


# Found by a seeded search (one table in ~10^5). At step 2 the candidates rank [5, 5], [3] + EOS,
# [5] + EOS (5e-5 behind), ...: with K = 2 only an EOS among the top K closes. Also closing the one
# ranked K-th fills the K closed slots early, and the search stops on [3] instead of finding
# [5, 5, 5, 5, 5, 5, 5], which the length penalty (alpha 2) prefers.
ONLY_TOP_K_CLOSE = weighted(
    {
        BOS: {EOS: 47, 5: 49, 3: 50, 6: 8, 4: 12},
        3: {5: 6, 6: 30, 4: 1, 3: 23, EOS: 35},
        4: {3: 5, 4: 3, EOS: 50},
        5: {3: 29, EOS: 53, 5: 59},
        6: {4: 20, 6: 3, 5: 59, EOS: 46},
    }
)


def test_only_an_eos_among_the_top_k_closes_a_hypothesis() -> None:
    expected = [5, 5, 5, 5, 5, 5, 5]
    assert reference_beam_search(ONLY_TOP_K_CLOSE, beam_size=2, max_len=7, alpha=2.0) == (expected, False)
    assert beam(ONLY_TOP_K_CLOSE, beam_size=2, max_len=7, alpha=2.0) == [expected]


def test_exact_ties_go_to_the_hypothesis_closed_first() -> None:
    # [3] + EOS and [4, 5] + EOS both have probability exactly 1/2 (no rounding: one log-softmax value
    # plus zeros). The first one closed wins: [3], not the larger list [4, 5].
    table = {BOS: {3: 0.5, 4: 0.5}, 3: {EOS: 1.0}, 4: {5: 1.0}, 5: {EOS: 1.0}}
    assert beam(table, beam_size=2, max_len=5, alpha=0.0, batch=2) == [[3], [3]]


def test_an_image_stops_when_its_best_live_beam_only_equals_the_worst_closed() -> None:
    # With K = 2 and alpha 2, step 3 closes [3, 5] + EOS and keeps [3, 5, 6] live with exactly the same
    # log-probability (EOS and 6 share one row at 0.5 each), so the best live beam EQUALS the worst closed
    # hypothesis: "does not beat" means stop, with [3]. Carrying on would let the length penalty lift
    # [3, 5, 6, 8, 8, ...] above it. Every tie here sits inside the top K, so topk's order does not matter.
    table = {
        BOS: {3: 0.9, 4: 0.1},
        3: {EOS: 0.5, 5: 0.5},
        4: {7: 1.0},
        5: {EOS: 0.5, 6: 0.5},
        6: {8: 1.0},
        7: {EOS: 1.0},
        8: {8: 1.0},
    }
    assert beam(table, beam_size=2, max_len=8, alpha=2.0, batch=2) == [[3], [3]]
    scores = {tuple(ids): score for score, ids in oracle_hypotheses(table, 8, 2.0)}
    assert scores[(3, 5, 6, 8, 8, 8, 8, 8)] > scores[(3,)]  # so stopping is what picks [3]


def on_cpu(table: dict[int, dict[int, float]], vocab: int = 8):  # noqa: ANN201
    """`table_step` that makes its tensors on the device of the tokens it is fed."""
    plain = table_step(table, vocab)

    def step(tokens: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        assert tokens.device.type == state[0].device.type == "cpu"
        with torch.device("cpu"):
            return plain(tokens, state)

    return step


def test_tensors_follow_the_state_device_not_torchs_default() -> None:
    """Decoding makes every tensor on the decoder state's device, even when the default device is another."""
    kwargs = {"batch_size": 2, "max_len": 6, "bos_id": BOS, "eos_id": EOS}
    state = start_state(2)
    with torch.device("meta"):  # any tensor made without an explicit device lands here and fails
        beams = beam_search(on_cpu(MYOPIC), state, beam_size=2, **kwargs)
        greedy = greedy_decode(on_cpu(MYOPIC), state, **kwargs)
    assert beams == [[4]] * 2
    assert greedy == [[3, 5]] * 2


@st.composite
def tables(draw: st.DrawFn) -> dict[int, dict[int, float]]:
    """A random bigram table over 1-3 tokens (ids 3..5); each row a distribution over EOS and tokens."""
    tokens = list(range(3, 3 + draw(st.integers(1, 3))))
    table = {}
    for previous in [BOS, *tokens]:
        successors = draw(st.lists(st.sampled_from([EOS, *tokens]), min_size=1, max_size=len(tokens) + 1, unique=True))
        weights = draw(st.lists(st.integers(1, 60), min_size=len(successors), max_size=len(successors), unique=True))
        table[previous] = {token: weight / sum(weights) for token, weight in zip(successors, weights, strict=True)}
    return table


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(tables(), st.integers(1, 4), st.sampled_from([0.0, 0.3, 0.7, 1.0, 1.5, 3.0]))
def test_exhaustive_beam_search_equals_the_oracle_on_random_tables(
    table: dict[int, dict[int, float]], max_len: int, alpha: float
) -> None:
    ranked = oracle_hypotheses(table, max_len, alpha)
    assume(len(ranked) == 1 or ranked[0][0] - ranked[1][0] > 1e-4)  # float32 must not decide a near-tie
    best = ranked[0][1]
    assert beam(table, beam_size=exhaustive_beam(table, max_len), max_len=max_len, alpha=alpha, batch=2) == [best, best]


def reference_beam_search(
    table: dict[int, dict[int, float]], *, beam_size: int, max_len: int, alpha: float
) -> tuple[list[int], bool]:
    """The algorithm of `beam_search`'s docstring for one image, in plain float64 Python.

    Returns the best sequence and whether some decision hung on scores closer than 1e-5,
    where the float32 implementation may legitimately decide the other way.
    """
    k, near = beam_size, 1e-5
    live: list[tuple[float, list[int]]] = [(0.0, [])]
    closed: list[tuple[float, list[int]]] = []
    ambiguous = False

    def penalty(n: int) -> float:
        return ((5 + n) / 6) ** alpha

    for step in range(max_len):
        candidates = sorted(
            (
                (score + math.log(prob), ids, token)
                for score, ids in live
                for token, prob in table.get(ids[-1] if ids else BOS, {EOS: 1.0}).items()
            ),
            key=lambda candidate: candidate[0],
            reverse=True,
        )
        ranked = [candidate[0] for candidate in candidates]
        ambiguous |= any(a - b < near for a, b in zip(ranked, ranked[1:], strict=False))
        live = []
        for rank, (score, ids, token) in enumerate(candidates[: 2 * k]):  # the 2·K best continuations
            if len(live) == k:
                break
            if token != EOS:
                live.append((score, [*ids, token]))  # the best K others stay live
            elif rank < k:
                closed.append((score / penalty(step + 1), ids))  # an EOS among the top K closes
        closed = sorted(closed, key=lambda hyp: hyp[0], reverse=True)[:k]
        if live and len(closed) == k:
            ambiguous |= abs(live[0][0] / penalty(step + 1) - closed[-1][0]) < near
        if not live or (len(closed) == k and live[0][0] / penalty(step + 1) <= closed[-1][0]):
            break  # done: K closed and the best live one, at its current length, does not beat the worst
    else:
        closed += [(score / penalty(len(ids)), ids) for score, ids in live]  # at max_len live beams count too
    ranked = sorted((hyp[0] for hyp in closed), reverse=True)
    ambiguous |= len(ranked) > 1 and ranked[0] - ranked[1] < near
    return max(closed, key=lambda hyp: hyp[0])[1], ambiguous


def test_reference_beam_search_follows_the_docstring_by_hand() -> None:
    # K = 1 is greedy; MYOPIC's greedy caption is [3, 5] and its best one [4].
    assert reference_beam_search(MYOPIC, beam_size=1, max_len=5, alpha=0.0)[0] == [3, 5]
    assert reference_beam_search(MYOPIC, beam_size=2, max_len=5, alpha=0.0)[0] == [4]
    assert reference_beam_search(ONE_IS_NOT_K, beam_size=2, max_len=8, alpha=2.0)[0] == [3, 4, 5, 6, 7]
    assert reference_beam_search(EOS_COUNTS, beam_size=2, max_len=6, alpha=1.0)[0] == [3]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(tables(), st.integers(1, 6), st.integers(1, 4), st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]))
def test_beam_search_follows_its_documented_algorithm_on_random_tables(
    table: dict[int, dict[int, float]], max_len: int, beam_size: int, alpha: float
) -> None:
    """Small beams prune, stop early and compete at max_len exactly as the docstring says."""
    expected, ambiguous = reference_beam_search(table, beam_size=beam_size, max_len=max_len, alpha=alpha)
    assume(not ambiguous)
    assert beam(table, beam_size=beam_size, max_len=max_len, alpha=alpha, batch=3) == [expected] * 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(tables(), st.integers(1, 6), st.sampled_from([0.0, 0.7, 2.0, 4.0]))
def test_beam_size_one_is_greedy_whatever_the_length_penalty(
    table: dict[int, dict[int, float]], max_len: int, alpha: float
) -> None:
    _, ambiguous = reference_beam_search(table, beam_size=1, max_len=max_len, alpha=0.0)
    assume(not ambiguous)  # greedy's argmax must not face a near-tie
    greedy = greedy_decode(table_step(table), start_state(2), batch_size=2, bos_id=BOS, eos_id=EOS, max_len=max_len)
    assert beam(table, beam_size=1, max_len=max_len, alpha=alpha, batch=2) == greedy


def tiny_model(family: str):  # noqa: ANN201
    spec = get_family(family)
    config = spec.config_cls(backbone="tiny", image_size=32, embed_dim=16, hidden_dim=16, dropout=0.0)
    torch.manual_seed(1)
    model = spec.build(config, 12, backbone_weights="random").eval()
    with torch.no_grad():  # sharpen the random logits so decoding does not hit near-ties
        model.output.weight.mul_(8)
    return model


@pytest.mark.parametrize("family", ["cnn-lstm", "cnn-lstm-attn"])
def test_beam_one_equals_greedy_on_real_models(family: str) -> None:
    model = tiny_model(family)
    features = torch.randn(5, 128, 2, 2)
    kwargs = {"batch_size": 5, "bos_id": BOS, "eos_id": EOS, "max_len": 8}
    greedy = greedy_decode(model.step, model.start(features), **kwargs)
    assert beam_search(model.step, model.start(features), beam_size=1, length_penalty=0.7, **kwargs) == greedy


def test_beam_one_equals_greedy_on_a_table() -> None:
    greedy = greedy_decode(table_step(MYOPIC), start_state(3), batch_size=3, bos_id=BOS, eos_id=EOS, max_len=5)
    beam = beam_search(table_step(MYOPIC), start_state(3), batch_size=3, beam_size=1, max_len=5, bos_id=BOS, eos_id=EOS)
    assert beam == greedy


@pytest.mark.parametrize("family", ["cnn-lstm", "cnn-lstm-attn"])
def test_batched_beam_search_equals_one_image_at_a_time(family: str) -> None:
    model = tiny_model(family)
    features = torch.randn(4, 128, 2, 2)
    kwargs = {"beam_size": 3, "max_len": 8, "length_penalty": 0.6, "bos_id": BOS, "eos_id": EOS}
    batched = beam_search(model.step, model.start(features), batch_size=4, **kwargs)
    single = [beam_search(model.step, model.start(features[i : i + 1]), batch_size=1, **kwargs)[0] for i in range(4)]
    assert batched == single
    assert all(EOS not in ids and BOS not in ids and len(ids) <= 8 for ids in batched)


def test_beam_search_is_at_least_as_likely_as_greedy_on_a_real_model() -> None:
    model = tiny_model("cnn-lstm-attn")
    features = torch.randn(4, 128, 2, 2)
    max_len = 20

    def log_prob(index: int, ids: list[int]) -> float:
        """Summed log-probability as beam search scores it: with EOS if it closed, as is if cut at max_len."""
        tokens = torch.tensor([[BOS, *ids]])  # (1, T)
        with torch.no_grad():
            logp = torch.log_softmax(model(features[index : index + 1], tokens), dim=-1)[0]  # (T, V)
        targets = ids if len(ids) == max_len else [*ids, EOS]
        return sum(float(logp[t, token]) for t, token in enumerate(targets))

    kwargs = {"batch_size": 4, "bos_id": BOS, "eos_id": EOS, "max_len": max_len}
    greedy = greedy_decode(model.step, model.start(features), **kwargs)
    beam = beam_search(model.step, model.start(features), beam_size=4, **kwargs)
    for i in range(4):
        assert log_prob(i, beam[i]) >= log_prob(i, greedy[i]) - 1e-4


@pytest.mark.parametrize(
    ("batch_size", "max_len", "beam_size"), [(0, 3, 2), (1, 0, 2), (1, 3, 0), (-1, 3, 2), (1, -2, 2), (1, 3, -1)]
)
def test_invalid_arguments(batch_size: int, max_len: int, beam_size: int) -> None:
    message = f"must be positive, got {batch_size}, {max_len}, {beam_size}"
    with pytest.raises(InputError, match=message):
        beam_search(
            table_step(MYOPIC),
            start_state(1),
            batch_size=batch_size,
            beam_size=beam_size,
            max_len=max_len,
            bos_id=BOS,
            eos_id=EOS,
        )
    if beam_size > 0:
        with pytest.raises(InputError, match=f"must be positive, got {batch_size}, {max_len}, 1"):
            greedy_decode(
                table_step(MYOPIC), start_state(1), batch_size=batch_size, bos_id=BOS, eos_id=EOS, max_len=max_len
            )


def test_default_length_penalty_is_plain_log_probability() -> None:
    kwargs = {"batch_size": 1, "beam_size": 2, "max_len": 8, "bos_id": BOS, "eos_id": EOS}
    assert beam_search(table_step(ONE_IS_NOT_K), start_state(1), **kwargs) == [[]]  # as alpha 0 above


def counting(step_fn):  # noqa: ANN001, ANN201
    """The step function, counting its calls in `.calls`."""

    def step(tokens: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        step.calls += 1
        return step_fn(tokens, state)

    step.calls = 0
    return step


def test_decoding_stops_calling_the_decoder_once_every_image_is_done() -> None:
    # Every MYOPIC caption ends by the third token; a max_len of 50 must not cost 50 decoder steps.
    step = counting(table_step(MYOPIC))
    assert greedy_decode(step, start_state(2), batch_size=2, bos_id=BOS, eos_id=EOS, max_len=50) == [[3, 5]] * 2
    assert step.calls == 3
    step = counting(table_step(MYOPIC))
    assert beam_search(step, start_state(2), batch_size=2, beam_size=2, max_len=50, bos_id=BOS, eos_id=EOS) == [[4]] * 2
    assert step.calls == 3  # [4] closes at step 2; step 3 closes [3, 5], the second of K = 2: nothing live beats them


def test_finished_beams_tolerate_garbage_logits() -> None:
    """Rows fed EOS (finished images, unused beams) may come back as NaN: they must never be chosen."""
    plain = table_step(MYOPIC)

    def garbage_after_eos(
        tokens: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        logits, state = plain(tokens, state)
        return logits.masked_fill((tokens == EOS).unsqueeze(1), math.nan), state

    kwargs = {"batch_size": 2, "max_len": 6, "bos_id": BOS, "eos_id": EOS}
    assert beam_search(garbage_after_eos, start_state(2), beam_size=3, **kwargs) == [[4]] * 2
    assert greedy_decode(garbage_after_eos, start_state(2), **kwargs) == [[3, 5]] * 2


def test_a_decoder_without_any_finite_score_gives_an_empty_caption() -> None:
    def hopeless(
        tokens: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return torch.full((tokens.shape[0], 6), -math.inf), state

    out = beam_search(hopeless, start_state(2), batch_size=2, beam_size=2, max_len=4, bos_id=BOS, eos_id=EOS)
    assert out == [[], []]


def test_state_the_step_hands_back_untouched_is_not_reordered() -> None:
    """Attention memory (the same for every beam of an image) comes back as the very same tensor: no copy."""
    plain = table_step(MYOPIC)
    seen: list[torch.Tensor] = []

    def step(tokens: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        previous, memory = state
        seen.append(memory)
        logits, (fed,) = plain(tokens, (previous,))  # the fed tokens' state is reordered (table_step checks)
        return logits, (fed, memory)

    state = (torch.full((2,), -1, dtype=torch.long), torch.arange(2.0).reshape(2, 1))
    out = beam_search(step, state, batch_size=2, beam_size=3, max_len=6, bos_id=BOS, eos_id=EOS)
    assert out == [[4]] * 2
    assert len(seen) == 3 and all(memory is seen[0] for memory in seen)
    assert seen[0].flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # (B*K, 1): each image's row K times


@pytest.mark.gpu
def test_beam_search_on_cuda_equals_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = tiny_model("cnn-lstm-attn")
    features = torch.randn(3, 128, 2, 2)
    kwargs = {"batch_size": 3, "bos_id": BOS, "eos_id": EOS, "max_len": 12}
    cpu_beam = beam_search(model.step, model.start(features), beam_size=3, length_penalty=0.7, **kwargs)
    cpu_greedy = greedy_decode(model.step, model.start(features), **kwargs)
    model = model.cuda()
    state = model.start(features.cuda())
    assert beam_search(model.step, state, beam_size=3, length_penalty=0.7, **kwargs) == cpu_beam
    assert greedy_decode(model.step, model.start(features.cuda()), **kwargs) == cpu_greedy


def test_banned_tokens_are_never_emitted() -> None:
    from vicap_jobs.models.decoding import ban_tokens

    vocab = 6

    def prefers_pad(
        tokens: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        logits = torch.zeros(tokens.shape[0], vocab)
        logits[:, 0] = 5.0  # PAD
        logits[:, 1] = 4.0  # BOS
        logits[:, 4] = 3.0
        logits[:, 2] = 2.0 if tokens[0].item() == 4 else -1.0  # EOS after one real token
        return logits, state

    state = (torch.zeros(2, 1),)
    assert greedy_decode(prefers_pad, state, batch_size=2, bos_id=1, eos_id=2, max_len=5)[0][0] == 0
    banned = ban_tokens(prefers_pad, (0, 1))
    assert greedy_decode(banned, state, batch_size=2, bos_id=1, eos_id=2, max_len=5) == [[4, 4, 4, 4, 4]] * 2
    assert beam_search(banned, state, batch_size=2, beam_size=2, max_len=5, bos_id=1, eos_id=2)[0][0] == 4


def draw(table: dict[int, dict[int, float]], batch: int, seed: int, max_len: int = 10):  # noqa: ANN201
    """`sample_decode` on a table step function with a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return sample_decode(
        table_step(table), start_state(batch), batch_size=batch, bos_id=BOS, eos_id=EOS, max_len=max_len,
        generator=generator,
    )  # fmt: skip


def test_sampling_shapes_mask_and_log_probs_follow_each_drawn_caption() -> None:
    """Tokens, log-probs and mask are (B, T); the mask ends at the row's EOS; summed log-probs are the caption's."""
    tokens, log_probs, mask = draw(MYOPIC, batch=64, seed=0)
    assert tokens.shape == log_probs.shape == mask.shape and tokens.shape[0] == 64 and tokens.shape[1] <= 10
    assert tokens.dtype == torch.long and mask.dtype == torch.bool
    captions = sampled_captions(tokens, EOS)
    for row, ids in enumerate(captions):
        assert EOS not in ids
        assert mask[row].tolist() == [True] * (len(ids) + 1) + [False] * (tokens.shape[1] - len(ids) - 1)
        assert tokens[row, len(ids) :].eq(EOS).all()  # EOS, then EOS repeated
        assert float((log_probs[row] * mask[row]).sum()) == pytest.approx(sequence_log_prob(MYOPIC, ids), abs=1e-5)
    assert {tuple(ids) for ids in captions} > {(3, 5), (4,)}  # not just the greedy caption


def test_sampling_draws_from_the_softmax() -> None:
    """First tokens follow the decoder's probabilities (0.6 / 0.4) over many draws."""
    tokens, _, _ = draw(MYOPIC, batch=4000, seed=1)
    assert float(tokens[:, 0].eq(3).float().mean()) == pytest.approx(0.6, abs=0.03)
    after_3 = tokens[tokens[:, 0] == 3, 1]
    assert float(after_3.eq(EOS).float().mean()) == pytest.approx(0.2, abs=0.03)


def test_sampling_is_repeatable_with_a_seeded_generator() -> None:
    """The same seed draws the same captions; another seed draws others."""
    first, again, other = (draw(MYOPIC, batch=32, seed=seed)[0] for seed in (7, 7, 8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_sampling_stops_at_max_len_without_eos_and_keeps_the_graph() -> None:
    """A row cut at max_len keeps every position; log-probs of a real model carry gradients."""
    loop = {BOS: {3: 1.0}, 3: {3: 0.9, EOS: 0.1}}
    tokens, _, mask = draw(loop, batch=200, seed=0, max_len=4)
    cut = [row for row, ids in enumerate(sampled_captions(tokens, EOS)) if len(ids) == 4]
    assert cut and all(mask[row].all() for row in cut) and tokens.shape[1] == 4
    model = tiny_model("cnn-lstm")
    features = torch.randn(3, 128, 2, 2)
    _, log_probs, mask = sample_decode(
        model.step, model.start(features), batch_size=3, bos_id=BOS, eos_id=EOS, max_len=6
    )
    (log_probs * mask).sum().backward()
    assert model.output.weight.grad is not None and model.output.weight.grad.abs().sum() > 0


def test_sampling_rejects_invalid_arguments() -> None:
    with pytest.raises(InputError):
        sample_decode(table_step(MYOPIC), start_state(1), batch_size=1, bos_id=BOS, eos_id=EOS, max_len=0)
