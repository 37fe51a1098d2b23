"""The reference path: all pair scores at once in plain PyTorch, autograd for every derivative.

It is the oracle of the other paths, and the path ``kernel="auto"`` takes whenever all scores
fit the block budget, under ``torch.func`` transforms and for second derivatives of the others
(their backward passes call it when a graph is being built).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mi_losses.kernels.factors import (
    direct_scores,
    exp_normal,
    scores,
    sides,
    statistics,
)
from mi_losses.kernels.factors import (
    directions as all_directions,
)


class Result(NamedTuple):
    """What a path computes, all directions concatenated (``Q`` queries)."""

    log_sum_exp: torch.Tensor  # (Q,), -inf where a query has no valid pair; with grad
    stats: torch.Tensor  # (4, Q) detached: sum w z, sum w own, sum w constants, |V_i|
    excess: torch.Tensor  # largest rounding error beyond the tolerance (0-d; -inf: none)


def reference(
    inputs: tuple[torch.Tensor, ...],
    directions: tuple[tuple[int, int, int, int], ...],
    with_own: bool,
    dtype: torch.dtype,
    check: bool,
    direct: bool = False,
) -> Result:
    """Per-query ``logsumexp`` of the valid pair scores, the statistics and the rounding excess.

    ``direct``: pairs the rounding check flags are evaluated from their differences instead.
    """
    log_sum_exps, all_stats = [], []
    excess = inputs[0].new_full((), -math.inf, dtype=dtype)
    for d in all_directions(inputs, directions, with_own):
        s = sides(*d, dtype)
        block = scores(s, check or direct)
        if block.excess is not None and block.excess.numel():
            excess = torch.maximum(excess, block.excess.amax())
            if direct and bool(excess > 0):
                block = block._replace(z=direct_scores(block, block.excess > 0, d, s, dtype))
        with torch.no_grad():
            peak = block.z.amax(-1, keepdim=True) if block.z.shape[-1] else block.z.sum(-1, True)
            has = torch.isfinite(peak)
            peak = torch.where(has, peak, 0.0)
        # logsumexp without subnormal terms (many times slower on CPU), differentiable twice.
        total = exp_normal(block.z - peak).sum(-1, keepdim=True)
        lse = torch.where(has, total.clamp_min(1.0).log() + peak, -math.inf).squeeze(-1)
        count = block.valid.sum(-1).to(dtype)
        all_stats.append(torch.stack([*statistics(block._replace(z=block.z.detach())), count]))
        log_sum_exps.append(lse)
    return Result(torch.cat(log_sum_exps), torch.cat(all_stats, 1), excess)
