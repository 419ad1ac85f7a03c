"""Greedy and beam search on hand-built step functions and on tiny real models."""

from __future__ import annotations

import math

import pytest
import torch

from vicap_jobs.errors import InputError
from vicap_jobs.models.decoding import beam_search, greedy_decode, length_penalty_factor
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
    beams = beam_search(table_step(loop), start_state(1), batch_size=1, beam_size=2, max_len=4, bos_id=BOS, eos_id=EOS)
    assert len(beams[0]) <= 4


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

    def log_prob(index: int, ids: list[int]) -> float:
        tokens = torch.tensor([[BOS, *ids]])  # (1, T)
        with torch.no_grad():
            logp = torch.log_softmax(model(features[index : index + 1], tokens), dim=-1)[0]  # (T, V)
        return sum(float(logp[t, token]) for t, token in enumerate([*ids, EOS]))

    kwargs = {"batch_size": 4, "bos_id": BOS, "eos_id": EOS, "max_len": 20}
    greedy = greedy_decode(model.step, model.start(features), **kwargs)
    beam = beam_search(model.step, model.start(features), beam_size=4, **kwargs)
    for i in range(4):
        if len(greedy[i]) < 20 and len(beam[i]) < 20:  # both finished with EOS
            assert log_prob(i, beam[i]) >= log_prob(i, greedy[i]) - 1e-4


def test_invalid_arguments() -> None:
    with pytest.raises(InputError):
        greedy_decode(table_step(MYOPIC), start_state(1), batch_size=1, bos_id=BOS, eos_id=EOS, max_len=0)
    with pytest.raises(InputError):
        beam_search(table_step(MYOPIC), start_state(1), batch_size=1, beam_size=0, max_len=3, bos_id=BOS, eos_id=EOS)


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
