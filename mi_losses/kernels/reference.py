"""The reference path: all pair scores at once in plain PyTorch, autograd for every derivative.

It is the oracle of the other paths, and the path ``kernel="auto"`` takes under ``torch.func``
transforms and ``torch.compile``; the other paths' backward passes differentiate it when a graph
is being built (second derivatives), and the float64 fallback runs it. :func:`accurate_scores`
is the distance matrix (``pairwise_square_mahalanobis_distance``) from the same scores.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mi_losses._validation import host_fallback
from mi_losses.kernels.directions import Direction
from mi_losses.kernels.directions import directions as all_directions
from mi_losses.kernels.factors import sides
from mi_losses.kernels.scores import (
    Scores,
    direct_scores,
    exp_normal,
    scores,
    softmax,
    statistics,
)


class Result(NamedTuple):
    """What every path computes per query, all directions concatenated (``Q`` queries).

    Attributes:
        log_sum_exp: ``logsumexp_{j in V_i} z_ij``, ``-inf`` where ``V_i`` is empty; with grad.
        num_valid: ``|V_i|`` in the compute dtype, detached.
        stats: ``(3, Q)`` detached softmax-weighted sums (``w`` the softmax over ``V_i``):
            ``sum_j w_ij z_ij``, ``sum_j w_ij sum_P q_is`` (own), ``sum_j w_ij sum_P p_js``
            (constants); ``None`` unless the plan asks for statistics.
        excess: largest rounding error beyond the tolerance (0-d; ``-inf``: none).
    """

    log_sum_exp: torch.Tensor
    num_valid: torch.Tensor
    stats: torch.Tensor | None
    excess: torch.Tensor

    def queries(self, start: int, stop: int) -> Result:
        """The results of queries ``[start, stop)`` (``self`` when that is all of them)."""
        if start == 0 and stop == self.log_sum_exp.shape[0]:
            return self
        stats = None if self.stats is None else self.stats[:, start:stop]
        return Result(self.log_sum_exp[start:stop], self.num_valid[start:stop], stats, self.excess)


def log_sum_exp(z: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the last axis, ``-inf`` for the rows without a finite score (``has``
    false); terms below the smallest normal number are dropped (subnormals are many times
    slower on CPU). Differentiable to any order."""
    with torch.no_grad():
        peak = z.amax(-1) if z.shape[-1] else z.sum(-1)
        peak = peak.masked_fill(~has, 0.0)
    total = exp_normal(z - peak.unsqueeze(-1)).sum(-1)
    return (total.clamp_min(1.0).log() + peak).masked_fill(~has, -math.inf)


def pair_scores(
    d: Direction, dtype: torch.dtype, *, check: bool, direct: bool = False,
    constants: bool = True, statistics: bool = False,
) -> Scores:  # fmt: skip
    """The :class:`~mi_losses.kernels.scores.Scores` of every pair of one direction, with a
    graph: the expanded form, the rounding excess (``check``), and with ``direct`` the flagged
    pairs evaluated from their differences. ``constants=False`` leaves out the normalisers ``p``
    (then ``-z`` is the distance ``0.5 sum_P ((y_i - c_j) / sigma_j)^2``, without the
    cancellation of adding and removing ``sum_P p_js``); ``statistics``: the pair sums of ``p``."""
    s = sides(*d, dtype, check=check or direct)
    if not constants:
        c = s.components
        assert c.h2 is not None and c.p is not None
        s = s._replace(components=c._replace(k=-0.5 * c.h2, p=torch.zeros_like(c.p)))
    block = scores(s, check=check or direct, constants=statistics)
    if direct and block.excess is not None:
        flagged = ~(block.excess <= 0)  # NaN flagged too
        if bool(flagged.any()):
            block = block._replace(z=direct_scores(block, flagged, d, s, dtype))
    return block


def accurate_scores(d: Direction, dtype: torch.dtype, *, check: bool) -> Scores:
    """:func:`pair_scores` without the normalisers, all pairs at once, and with ``check``
    where the rounding check flags a pair the float64 re-evaluation of docs/math.md#numerics
    (flagged pairs from their differences), cast back to ``dtype``: the distance matrix's one
    implementation."""
    block = pair_scores(d, dtype, check=check, constants=False)
    return _re_evaluated(block, d, dtype) if check else block


@host_fallback
def _re_evaluated(block: Scores, d: Direction, dtype: torch.dtype) -> Scores:
    """``block``, or where a pair is flagged the float64 re-evaluation. Under
    ``torch.compile`` it runs eagerly (a graph break), so compiled results are checked too."""
    assert block.excess is not None
    if bool((block.excess <= 0).all()):
        return block
    exact = pair_scores(d, torch.float64, check=True, direct=True, constants=False)
    return exact._replace(z=exact.z.to(dtype))


def reference(
    inputs: tuple[torch.Tensor, ...],
    directions: tuple[tuple[int, int, int, int], ...],
    *,
    with_own: bool,
    dtype: torch.dtype,
    check: bool,
    with_statistics: bool = True,
    direct: bool = False,
) -> Result:
    """Per-query ``logsumexp`` of the valid pair scores, the statistics (when asked) and the
    rounding excess. ``direct``: pairs the rounding check flags are evaluated from their
    differences instead."""
    log_sum_exps, counts, all_stats = [], [], []
    excess = inputs[0].new_full((), -math.inf, dtype=dtype)
    for d in all_directions(inputs, directions, with_own):
        block = pair_scores(d, dtype, check=check, direct=direct, statistics=with_statistics)
        if block.excess is not None and block.excess.numel():
            excess = torch.maximum(excess, block.excess.amax())
        count = block.valid.sum(-1)
        log_sum_exps.append(log_sum_exp(block.z, count > 0))
        counts.append(count.to(dtype))
        if with_statistics:
            all_stats.append(torch.stack(statistics(block, softmax(block.z)[0])))
    stats = torch.cat(all_stats, 1) if with_statistics else None
    return Result(torch.cat(log_sum_exps), torch.cat(counts), stats, excess)


def graph_grads(
    outputs: tuple[torch.Tensor, ...],
    upstream: tuple[torch.Tensor, ...],
    inputs: tuple[torch.Tensor, ...],
    needs: tuple[bool, ...],
) -> list[torch.Tensor | None]:
    """The gradients of ``outputs`` (weighted by ``upstream``) with respect to the ``inputs``
    that ``needs`` asks for, as a graph (a custom backward pass while ``create_graph=True``:
    second derivatives by autograd); zeros for an input the outputs do not depend on."""
    wanted = [t for t, need in zip(inputs, needs, strict=True) if need]
    found = iter(
        torch.autograd.grad(outputs, wanted, upstream, create_graph=True, allow_unused=True)
    )
    grads: list[torch.Tensor | None] = []
    for tensor, need in zip(inputs, needs, strict=True):
        value = next(found) if need else None
        grads.append(torch.zeros_like(tensor) if need and value is None else value)
    return grads
