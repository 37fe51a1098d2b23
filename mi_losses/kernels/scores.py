"""A block's pair scores from the factors (:mod:`~mi_losses.kernels.factors`): the matrix
products, the masks, the rounding check of docs/math.md#numerics, the softmax-weighted
statistics and the direct evaluation of flagged pairs."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mi_losses.kernels.directions import Direction
from mi_losses.kernels.factors import Sides

# Rounding the expanded square costs about ``eps * magnitude`` nats of a pair's distance; where
# that exceeds this relative plus absolute tolerance the pair is flagged (docs/math.md#numerics).
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-8)}


def exp_normal(x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``exp(x)`` with results below the smallest normal number set to 0 (a subnormal result is
    many times slower on CPU; the terms lost are below ``1e-38`` of the largest). ``inplace``
    (without autograd) overwrites ``x``."""
    cutoff = math.log(torch.finfo(x.dtype).tiny)  # threshold: x <= cutoff -> -inf (NaN kept)
    if inplace:
        return torch.nn.functional.threshold(x, cutoff, -math.inf, inplace=True).exp_()
    return torch.nn.functional.threshold(x, cutoff, -math.inf).exp()


def softmax(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exp(z - logsumexp), logsumexp)`` over the last axis, without a graph: weights ``0``
    and ``logsumexp`` ``-inf`` for the rows without a finite score; terms below the smallest
    normal number are dropped (:func:`exp_normal`). The weights are normalised by their sum,
    not by a rounded ``logsumexp``."""
    with torch.no_grad():
        peak = z.amax(-1, keepdim=True) if z.shape[-1] else z.sum(-1, keepdim=True)
        peak = peak.nan_to_num_(math.nan, math.inf, 0.0)  # -inf (no finite score) -> 0
        e = exp_normal(z - peak, inplace=True)
        total = e.sum(-1, keepdim=True)
        log_sum_exp = total.log().add_(peak).squeeze(-1)  # log 0 = -inf without a valid pair
        return e.div_(total.clamp_min_(torch.finfo(e.dtype).tiny)), log_sum_exp


def weights(s: Sides, log_sum_exp: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``G_ij = g_i exp(z_ij - logsumexp_i)`` of the pairs of ``s`` (``0`` where not valid), made
    in place in one ``(m, n)`` matrix (the backward passes: no graph; ``log_sum_exp`` finite)."""
    q, c = s.queries, s.components
    assert c.k is not None
    with torch.no_grad():
        z = torch.addmm(log_sum_exp.unsqueeze(-1), q.a, c.k.T, beta=-1.0)
        z.addmm_(q.y2, c.w.T, alpha=-0.5).addmm_(q.y, c.wc.T)
        if q.q is not None:
            z.addmm_(q.q, c.b.T, alpha=-1.0)
        z.masked_fill_((q.a @ c.b.T) == 0, -math.inf)
        return exp_normal(z, inplace=True).mul_(grad.unsqueeze(-1))


class Scores(NamedTuple):
    """A block's scores and what the statistics and the rounding check need, ``(m, n)``."""

    z: torch.Tensor  # z_ij, -inf where the pair is not valid
    valid: torch.Tensor  # bool
    constants: torch.Tensor | None  # sum_P p_js (detached; None unless asked)
    own: torch.Tensor | None  # sum_P q_is (detached; None without an own term)
    excess: torch.Tensor | None  # rounding error beyond the tolerance, -inf where not valid


class Sums(NamedTuple):
    """Sums over positions of every pair of a block, ``(m, n)``: additive over chunks of
    positions (``largest``: a maximum). ``z`` has a graph when the factors have one; the rest
    is detached, ``None`` where not asked."""

    z: torch.Tensor  # z_ij before the masks
    positions: torch.Tensor  # |P(i, j)|
    constants: torch.Tensor | None  # sum_P p_js
    own: torch.Tensor | None  # sum_P q_is
    doubled: torch.Tensor | None  # sum_P h2_js, twice the halves (rounding check)
    squares: torch.Tensor | None  # |y'_i|^2, (m,) (rounding check)
    largest: torch.Tensor | None  # max w_j, (n,) (rounding check)


def pair_sums(s: Sides, *, check: bool, constants: bool = False) -> Sums:
    """The :class:`Sums` of the pairs of ``s``; ``constants`` (implied by ``check``) also the
    pair sums of ``p``."""
    q, c = s.queries, s.components
    assert c.k is not None and c.p is not None and c.h2 is not None
    z = torch.addmm(torch.addmm(q.a @ c.k.T, q.y2, c.w.T, alpha=-0.5), q.y, c.wc.T)
    own = None
    if q.q is not None:
        own = q.q @ c.b.T
        z = z.sub_(own)
        own = _detached(own)
    # One product per sum (not one product split: a view would keep all of them alive while
    # the block is reduced, two more (m, n) matrices at the peak of the many-block rows).
    count = _detached(q.a @ c.b.T)
    p_sums = _detached(q.a @ c.p.T) if check or constants else None
    if not check:
        return Sums(z, count, p_sums, own, None, None, None)
    return Sums(z, count, p_sums, own, _detached(q.a @ c.h2.T), q.squares, c.largest)


def _detached(t: torch.Tensor) -> torch.Tensor:
    """``t`` without its graph (``t`` itself when it has none: no operation)."""
    return t.detach() if t.requires_grad else t


def add_sums(total: Sums | None, part: Sums) -> Sums:
    """``total`` and ``part`` (of another chunk of positions) together."""
    if total is None:
        return part

    def plus(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        return a if a is None or b is None else a + b

    largest = total.largest
    if largest is not None and part.largest is not None:
        largest = torch.maximum(largest, part.largest)
    return Sums(
        total.z + part.z, total.positions + part.positions, plus(total.constants, part.constants),
        plus(total.own, part.own), plus(total.doubled, part.doubled),
        plus(total.squares, part.squares), largest,
    )  # fmt: skip


def finish(t: Sums, *, check: bool) -> Scores:
    """The :class:`Scores` of a block from its sums over all positions."""
    with torch.no_grad():
        valid = t.positions > 0
        invalid = ~valid
        excess = None
        if check:
            assert t.constants is not None and t.squares is not None
            assert t.largest is not None and t.doubled is not None
            dtype = t.z.dtype
            relative, absolute = TOLERANCES[dtype]
            # eps magnitude / 2 - relative distance - absolute in one buffer, -distance =
            # z + sum_P p + sum_P q (the distance is negative by rounding only: no abs needed)
            error = torch.addcmul(t.doubled, t.squares.unsqueeze(-1), t.largest, value=2.0)
            error.mul_(0.25 * torch.finfo(dtype).eps).add_(t.z, alpha=relative)
            error.add_(t.constants, alpha=relative)
            if t.own is not None:
                error.add_(t.own, alpha=relative)
            excess = error.sub_(absolute).masked_fill_(invalid, -math.inf)  # NaN: re-evaluated
    return Scores(t.z.masked_fill(invalid, -math.inf), valid, t.constants, t.own, excess)


def scores(s: Sides, *, check: bool, constants: bool = False) -> Scores:
    """The scores of every pair of ``s`` (with a graph when the factors have one);
    ``constants`` (implied by ``check``) also gives the pair sums of ``p``."""
    return finish(pair_sums(s, check=check, constants=constants), check=check)


def statistics(block: Scores, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(sum_j w z, sum_j w own, sum_j w constants)`` per query (detached) with ``weights``
    the softmax of ``block.z`` (:func:`softmax`)."""
    assert block.constants is not None
    with torch.no_grad():
        z = torch.where(block.valid, block.z, 0.0)
        own = (
            (weights * block.own).sum(-1)
            if block.own is not None
            else weights.new_zeros(weights.shape[0])
        )
        return (weights * z).sum(-1), own, (weights * block.constants).sum(-1)


def direct_scores(
    block: Scores,
    flagged: torch.Tensor,
    inputs: Direction,
    s: Sides,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``z`` with the ``flagged`` pairs of one direction evaluated from their differences (no
    cancellation). Differentiable to any order."""
    queries, _, clean, means, stds, a, b = inputs
    rows, cols = flagged.nonzero(as_tuple=True)
    active = (a[rows] & b[cols]).unsqueeze(-1)
    difference = torch.where(
        active, (queries[rows].to(dtype) - clean[cols].to(dtype)) - means[cols].to(dtype), 0.0
    )
    sigma = torch.where(active, stds[cols].to(dtype), 1.0)
    distance = 0.5 * (difference / sigma).square().sum((-1, -2))
    q, c = s.queries, s.components
    assert c.p is not None
    constants = (q.a[rows] * c.p[cols]).sum(-1)
    if q.q is not None:
        constants = constants + (q.q[rows] * c.b[cols]).sum(-1)
    return block.z.index_put((rows, cols), -(distance + constants))
