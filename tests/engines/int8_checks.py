"""How an int8 engine is held to fp32: the same tokens, or a divergence only at a near-tie.

Stated tolerance: along fp32's own greedy path, every step's int8 logits are within
REL_TOL of the fp32 logits' spread (max - min over the fixture) of fp32's; measured
here: ≤ 0.3 % for torchao and bitsandbytes on the trained tiny BLIP. A caption may
differ from fp32's only where fp32 itself hesitates: at the first differing step,
fp32's logit for int8's token is within 2 x that tolerance of its best. Anything else
(a wrong caption with clear fp32 margins) fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

REL_TOL = 0.02


def path_logits(engine: Any, pixels: np.ndarray, paths: Sequence[Sequence[int]]) -> torch.Tensor:
    """Logits (B, T, V) of each step of ``engine``'s model fed BOS + ``paths`` (EOS after each path)."""
    codec = engine.codec
    steps = max(len(path) for path in paths) + 1
    rows = [[codec.bos_id, *path] + [codec.eos_id] * (steps - 1 - len(path)) for path in paths]
    tokens = torch.tensor(rows, dtype=torch.long, device=engine.torch_device)  # (B, T)
    with torch.inference_mode():
        state = engine.model.start(engine.features(torch.from_numpy(pixels).to(engine.torch_device)))
        out = []
        for t in range(steps):
            logits, state = engine.model.step(tokens[:, t], state)
            out.append(logits.float().cpu())
    return torch.stack(out, dim=1)


def check_int8_agrees(int8: Any, fp32: Any, pixels: np.ndarray) -> int:
    """Assert the tolerance above; returns how many images got exactly fp32's ids."""
    reference_ids, ids = fp32._forward(pixels), int8._forward(pixels)
    reference = path_logits(fp32, pixels, reference_ids)
    tolerance = REL_TOL * float(reference.max() - reference.min())
    drift = float((path_logits(int8, pixels, reference_ids) - reference).abs().max())
    assert drift <= tolerance, f"int8 logits drift {drift:.4f} > {tolerance:.4f} from fp32's"
    eos = fp32.codec.eos_id
    for row, (mine, theirs) in enumerate(zip(ids, reference_ids, strict=True)):
        if mine == theirs:
            continue
        t = next(i for i in range(len(mine) + 1) if i >= len(theirs) or i >= len(mine) or mine[i] != theirs[i])
        chosen = mine[t] if t < len(mine) else eos
        best = theirs[t] if t < len(theirs) else eos
        gap = float(reference[row, t, best] - reference[row, t, chosen])
        assert gap <= 2 * tolerance, f"image {row}: int8 {mine} vs fp32 {theirs}, fp32 margin {gap:.3f} at step {t}"
    return sum(a == b for a, b in zip(ids, reference_ids, strict=True))
