"""Greedy and beam search (and sampling, for self-critical training), written once for every decoder and backend.

A decoder is a ``step_fn(tokens (B,) long, state) -> (logits (B, V), state)``
over torch tensors, where ``state`` is a tuple of batch-first tensors: a torch
model's ``step``, or an onnxruntime session wrapped to take and return tensors.
Both searches are batched over images and return, per image, the generated
token ids without BOS and without the final EOS.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vicap_jobs.errors import InputError

DecoderState = tuple[torch.Tensor, ...]
StepFn = Callable[[torch.Tensor, DecoderState], tuple[torch.Tensor, DecoderState]]


def ban_tokens(step_fn: StepFn, banned: tuple[int, ...]) -> StepFn:
    """A step function that never emits ``banned`` ids (e.g. PAD and BOS, which no caption contains).

    Without it an under-trained model can loop on PAD or BOS, which the
    vocabulary then silently drops, leaving a short or empty caption.
    """
    if not banned:
        return step_fn

    def banned_step(tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        logits, state = step_fn(tokens, state)
        logits = logits.clone()
        logits[:, list(banned)] = float("-inf")
        return logits, state

    return banned_step


def _check(batch_size: int, max_len: int, beam_size: int = 1) -> None:
    if batch_size < 1 or max_len < 1 or beam_size < 1:
        raise InputError(
            f"batch_size, max_len and beam_size must be positive, got {batch_size}, {max_len}, {beam_size}"
        )


def _strip_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


@torch.no_grad()
def greedy_decode(
    step_fn: StepFn, state: DecoderState, *, batch_size: int, bos_id: int, eos_id: int, max_len: int
) -> list[list[int]]:
    """Pick the most likely token at each step; at most ``max_len`` steps (EOS included).

    Returns one list of ids per image, without BOS and EOS.
    """
    _check(batch_size, max_len)
    device = state[0].device
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for _ in range(max_len):
        logits, state = step_fn(tokens, state)
        tokens = logits.argmax(dim=-1).to(torch.long).masked_fill(finished, eos_id)  # (B,)
        steps.append(tokens)
        finished |= tokens == eos_id
        if bool(finished.all()):
            break
    rows = torch.stack(steps, dim=1).tolist()  # (B, steps)
    return [_strip_eos(row, eos_id) for row in rows]


def length_penalty_factor(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha; alpha 0 means plain log-probabilities."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    step_fn: StepFn,
    state: DecoderState,
    *,
    batch_size: int,
    beam_size: int,
    max_len: int,
    length_penalty: float = 0.0,
    bos_id: int,
    eos_id: int,
) -> list[list[int]]:
    """Beam search with the GNMT length penalty; returns the best sequence per image.

    A hypothesis ending in EOS after n generated tokens (EOS counted) scores
    ``sum log p / ((5 + n) / 6) ** length_penalty``; 0 ranks by summed
    log-probability (favours short captions), about 0.6–1.0 evens that out.
    Each step ranks the 2·K best continuations of the K live beams: an EOS
    among the top K closes a hypothesis, the best K others stay live. An image
    is done once it holds K closed hypotheses and its best live beam, scored at
    its current length, does not beat the worst of them (the usual heuristic;
    exact when ``length_penalty`` is 0). At ``max_len`` steps the live beams
    count as hypotheses too. ``beam_size=1`` gives exactly greedy decoding.
    """
    _check(batch_size, max_len, beam_size)
    k = beam_size
    device = state[0].device
    state = tuple(part.repeat_interleave(k, dim=0) for part in state)  # (B*K, ...)
    tokens = torch.full((batch_size * k,), bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch_size, k), -math.inf, device=device)
    scores[:, 0] = 0.0  # all beams start equal: keep one so the first step yields K distinct tokens
    sequences: list[list[int]] = [[] for _ in range(batch_size * k)]
    closed: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size

    for step in range(max_len):
        previous = state
        logits, state = step_fn(tokens, state)
        # Parts the step hands back untouched (attention memory) are the same for every beam of an
        # image, and beams never move between images, so they need no reordering (saves a copy a step).
        unchanged = tuple(new is old for new, old in zip(state, previous, strict=True))
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
        vocab = log_probs.shape[1]
        candidates = (scores.reshape(-1, 1) + log_probs).reshape(batch_size, k * vocab)  # (B, K*V)
        candidates = candidates.masked_fill(candidates.isnan(), -math.inf)  # placeholder rows may hold garbage
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=1)  # (B, 2K)
        sources: list[int] = []
        next_tokens: list[int] = []
        next_scores: list[float] = []
        for b, (row_scores, row_index) in enumerate(zip(top_scores.tolist(), top_index.tolist(), strict=True)):
            live: list[tuple[int, int, float]] = []
            if not done[b]:
                for rank, (score, flat) in enumerate(zip(row_scores, row_index, strict=True)):
                    if score == -math.inf or len(live) == k:
                        break
                    beam, token = divmod(flat, vocab)
                    source = b * k + beam
                    if token != eos_id:
                        live.append((source, token, score))
                    elif rank < k:
                        closed[b].append((score / length_penalty_factor(step + 1, length_penalty), sequences[source]))
                closed[b].sort(key=lambda hyp: hyp[0], reverse=True)
                del closed[b][k:]
                done[b] = not live or (
                    len(closed[b]) == k
                    and live[0][2] / length_penalty_factor(step + 1, length_penalty) <= closed[b][-1][0]
                )
            if done[b]:
                live = []
            live += [(b * k, eos_id, -math.inf)] * (k - len(live))  # placeholders keep the shapes fixed
            for source, token, score in live:
                sources.append(source)
                next_tokens.append(token)
                next_scores.append(score)
        if all(done):
            break
        index = torch.tensor(sources, dtype=torch.long, device=device)
        state = tuple(
            part if same else part.index_select(0, index) for part, same in zip(state, unchanged, strict=True)
        )
        tokens = torch.tensor(next_tokens, dtype=torch.long, device=device)
        scores = torch.tensor(next_scores, device=device).reshape(batch_size, k)
        sequences = [sequences[source] + [token] for source, token in zip(sources, next_tokens, strict=True)]

    results: list[list[int]] = []
    final_scores = scores.reshape(-1).tolist()  # (B*K,)
    for b in range(batch_size):
        if not done[b]:  # ran out of steps: live beams compete as they are
            for j in range(b * k, b * k + k):
                score = final_scores[j]
                if score > -math.inf:
                    closed[b].append((score / length_penalty_factor(len(sequences[j]), length_penalty), sequences[j]))
        results.append(max(closed[b], key=lambda hyp: hyp[0])[1] if closed[b] else [])  # first best wins ties
    return results


def sample_decode(
    step_fn: StepFn,
    state: DecoderState,
    *,
    batch_size: int,
    bos_id: int,
    eos_id: int,
    max_len: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one caption per row from the decoder's softmax (multinomial); at most ``max_len`` steps (EOS included).

    Unlike the searches it keeps the autograd graph, for self-critical training.
    Returns ``tokens`` (B, T) long (EOS repeated after a row's EOS), ``log_probs``
    (B, T) of the drawn tokens and ``mask`` (B, T) bool: True up to and including
    the row's EOS, False after it. ``generator`` (on the state's device) makes draws repeatable.
    """
    _check(batch_size, max_len)
    device = state[0].device
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    drawn: list[torch.Tensor] = []
    chosen: list[torch.Tensor] = []
    alive: list[torch.Tensor] = []
    for _ in range(max_len):
        logits, state = step_fn(tokens, state)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
        with torch.no_grad():
            picked = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(1)  # (B,)
        tokens = picked.masked_fill(finished, eos_id)
        alive.append(~finished)
        drawn.append(tokens)
        chosen.append(log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1))  # (B,)
        finished = finished | (tokens == eos_id)
        if bool(finished.all()):
            break
    return torch.stack(drawn, dim=1), torch.stack(chosen, dim=1), torch.stack(alive, dim=1)


def sampled_captions(tokens: torch.Tensor, eos_id: int) -> list[list[int]]:
    """The ids of each row of ``sample_decode``'s tokens (B, T), without the EOS and what follows it."""
    return [_strip_eos(row, eos_id) for row in tokens.tolist()]
