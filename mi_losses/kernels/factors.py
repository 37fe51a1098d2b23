"""The pair scores as one matrix product of per-sample factors; helpers every path shares.

Every mixture estimator reduces, per query ``i``, the pair scores (docs/math.md)

    z_ij = - sum_{s in P(i,j)} [ 0.5 sum_e ((y_ise - c_jse) / sigma_jse)^2 + q_is + p_js ]

with ``q`` the query's own term (minus its log-density, mutual information; 0 for the mixture
entropy) and ``p_js = sum_e log sigma_jse + E/2 log 2 pi``. Features are centred on a detached
reference ``r`` and divided by a detached scale ``t`` (the score does not depend on them):
``y' = a (y - r) / t``, ``c' = (c - r) / t``, ``w = b (t / sigma)^2``. Then ``z = L R^T`` with

    L = [y'^2, y', a, a q]            R = [-w / 2, w c', -(h + b p), -b],   h = sum_e w c'^2 / 2

over ``2 S E + 2 S`` columns. Inactive positions are replaced (``y, c -> 0``, ``sigma -> 1``)
before any arithmetic whose derivative depends on them: they are never read.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)

# Rounding the expanded square costs about ``eps * magnitude`` nats of a pair's distance; where
# that exceeds this relative plus absolute tolerance the pair is flagged (docs/math.md#numerics).
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-8)}


def ranges(total: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive ranges of ``size`` (the last one shorter) over ``total``."""
    return [(start, min(start + size, total)) for start in range(0, total, max(size, 1))]


def block_rows(rows: int, row_bytes: int, budget: int) -> list[tuple[int, int]]:
    """Ranges of ``rows`` of ``row_bytes`` each, as many per block as the ``budget`` allows."""
    return ranges(rows, max(1, budget // max(row_bytes, 1)))


def exp_normal(x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``exp(x)`` with results below the smallest normal number set to 0 (a subnormal result is
    many times slower on CPU; the terms lost are below ``1e-38`` of the largest). ``inplace``
    (without autograd) overwrites ``x``."""
    cutoff = math.log(torch.finfo(x.dtype).tiny)
    if inplace:
        return x.masked_fill_(x < cutoff, -math.inf).exp_()
    return torch.where(x < cutoff, -math.inf, x).exp()


def effective_masks(
    query_mask: torch.Tensor, component_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions that take part in at least one valid pair: the others are never read."""
    return (
        query_mask & component_mask.any(0, keepdim=True),
        component_mask & query_mask.any(0, keepdim=True),
    )


Direction = tuple[
    torch.Tensor,
    tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]
"""One direction's queries, own ``(x, mu, sigma)`` or ``None``, clean, means, stds and
effective masks ``a``, ``b`` (the arguments of :func:`sides`)."""


class Sides(NamedTuple):
    """The factors of one direction (``m`` queries, ``n`` components, ``S`` positions)."""

    left: torch.Tensor  # L, (m, F)
    right: torch.Tensor  # R, (n, F)
    a: torch.Tensor  # query mask as 0/1, (m, S)
    q: torch.Tensor | None  # a q, (m, S); None without an own term
    b: torch.Tensor  # component mask as 0/1, (n, S)
    p: torch.Tensor  # b p, (n, S)
    h: torch.Tensor  # h, (n, S)
    squares: torch.Tensor  # |y'|^2, (m,): the rounding check's magnitude
    largest: torch.Tensor  # max_k w, (n,)

    def columns(self, start: int, stop: int) -> Sides:
        """The same factors restricted to components ``[start, stop)``."""
        return self._replace(
            right=self.right[start:stop],
            b=self.b[start:stop],
            p=self.p[start:stop],
            h=self.h[start:stop],
            largest=self.largest[start:stop],
        )


def sides(
    queries: torch.Tensor,
    own: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    clean: torch.Tensor,
    means: torch.Tensor | None,
    stds: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    dtype: torch.dtype,
    check: bool = True,
) -> Sides:
    """Factors of queries ``y`` ``(m, S, E)`` and components ``c = x + mu``, ``sigma``
    ``(n, S, E)`` with effective bool masks ``a`` ``(m, S)``, ``b`` ``(n, S)``; ``own`` is the
    queries' ``(x, mu, sigma)`` (mutual information) or ``None``. Differentiable to any order;
    ``check=False`` leaves out what only the rounding check needs."""
    e = queries.shape[-1]
    off_rows, off_cols = (~a).unsqueeze(-1), (~b).unsqueeze(-1)
    a_, b_ = a.to(dtype), b.to(dtype)
    y, x, sigma = queries.to(dtype), clean.to(dtype), stds.to(dtype)
    mu = None if means is None else means.to(dtype)
    with torch.no_grad():  # reference r: mean active centre; scale t: largest active std
        centres = (x if mu is None else x + mu).masked_fill(off_cols, 0.0)
        reference = centres.sum(0) / off_cols.logical_not().sum(0).clamp_min(1)
        scale = sigma.masked_fill(off_cols, 0.0).amax(0) if sigma.shape[0] else reference + 1
        scale = torch.where(scale > 0, scale, 1.0)
        inverse = scale.reciprocal()
        half_mask = -0.5 * b_.unsqueeze(-1)
        constant = scale.log().sum(-1) + e * HALF_LOG_TWO_PI  # sum_e log t + E/2 log 2 pi
    # Differences before masks (their derivatives are constants), masks before any product.
    scaled_y = (y - reference).masked_fill(off_rows, 0.0) * inverse
    # (x - r) + mu, not (x + mu) - r: x + mu rounds mu away when the data sit far from 0.
    centred = x - reference if mu is None else (x - reference) + mu
    scaled_c = centred.masked_fill(off_cols, 0.0) * inverse
    ratio = (sigma * inverse).masked_fill(off_cols, 1.0)  # sigma / t, 1 where inactive
    half_precision = ratio.pow(-2) * half_mask  # -w / 2
    weighted = -2.0 * half_precision * scaled_c
    p = ratio.log().sum(-1) + b_ * constant
    h = torch.linalg.vecdot(half_precision, scaled_c.square())  # -h
    left = [scaled_y.square().flatten(1), scaled_y.flatten(1), a_]
    right = [half_precision.flatten(1), weighted.flatten(1), h - p]
    q = None
    if own is not None:
        own_x, own_mu, own_sigma = (t.to(dtype) for t in own)
        sigma_i = own_sigma.masked_fill(off_rows, 1.0)
        # (y - x) - mu, not y - (x + mu), for the same reason.
        residual = ((y - own_x) - own_mu).masked_fill(off_rows, 0.0) / sigma_i
        per_position = torch.linalg.vecdot(residual, 0.5 * residual) + sigma_i.log().sum(-1)
        q = (per_position + e * HALF_LOG_TWO_PI) * -a_
        left.append(q)
        right.append(-b_)
    squares = largest = h
    if check:
        with torch.no_grad():
            squares = scaled_y.flatten(1).square().sum(-1)
            flat = half_precision.flatten(1)
            largest = -2.0 * flat.amin(-1) if flat[0:1].numel() else h.sum(-1)
    return Sides(torch.cat(left, 1), torch.cat(right, 1), a_, q, b_, p, -h, squares, largest)


class Scores(NamedTuple):
    """A block's scores and what the statistics and the rounding check need, ``(m, n)``."""

    z: torch.Tensor  # z_ij, -inf where the pair is not valid
    valid: torch.Tensor  # bool
    constants: torch.Tensor  # sum_P p_js (detached)
    own: torch.Tensor  # sum_P q_is (detached; 0 without an own term)
    excess: torch.Tensor | None  # rounding error beyond the tolerance, -inf where not valid


def scores(s: Sides, check: bool) -> Scores:
    """The scores of every pair of ``s`` (with a graph when the factors have one)."""
    z = s.left @ s.right.T
    with torch.no_grad():
        valid = (s.a @ s.b.T) > 0
        constants = s.a @ s.p.T
        own = s.q.detach() @ s.b.T if s.q is not None else torch.zeros_like(constants)
        excess = None
        if check:
            dtype = z.dtype
            magnitude = 0.5 * (s.squares.unsqueeze(-1) * s.largest + s.a @ s.h.T)
            distance = (z + constants + own).abs()
            relative, absolute = TOLERANCES[dtype]
            error = torch.finfo(dtype).eps * magnitude - relative * distance - absolute
            excess = torch.where(valid, torch.nan_to_num(error, nan=math.inf), -math.inf)
    z = torch.where(valid, z, -math.inf)
    return Scores(z, valid, constants, own, excess)


def statistics(block: Scores) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax-weighted ``(sum_j w z, sum_j w own, sum_j w constants)`` per query (detached;
    normalised by the sum of the weights, not by a rounded ``logsumexp``)."""
    with torch.no_grad():
        peak = block.z.amax(-1, keepdim=True) if block.z.shape[-1] else block.z.sum(-1, True)
        e = exp_normal(block.z - torch.where(torch.isfinite(peak), peak, 0.0))
        total = e.sum(-1).clamp_min(torch.finfo(e.dtype).tiny)
        z = torch.where(block.valid, block.z, 0.0)
        sums = torch.stack(
            [(e * z).sum(-1), (e * block.own).sum(-1), (e * block.constants).sum(-1)]
        )
        return tuple(sums / total)


def direct_scores(
    block: Scores,
    flagged: torch.Tensor,
    inputs: Direction,
    s: Sides,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``z`` with the ``flagged`` pairs evaluated from their differences (no cancellation).

    ``inputs`` are one direction's queries, own ``(x, mu, sigma)`` or ``None``, clean, means,
    stds, effective masks. Differentiable to any order.
    """
    queries, _, clean, means, stds, a, b = inputs
    rows, cols = flagged.nonzero(as_tuple=True)
    active = (a[rows] & b[cols]).unsqueeze(-1)
    difference = torch.where(
        active, (queries[rows].to(dtype) - clean[cols].to(dtype)) - means[cols].to(dtype), 0.0
    )
    sigma = torch.where(active, stds[cols].to(dtype), 1.0)
    distance = 0.5 * (difference / sigma).square().sum((-1, -2))
    constants = (s.a[rows] * s.p[cols]).sum(-1)
    if s.q is not None:
        constants = constants + (s.q[rows] * s.b[cols]).sum(-1)
    return block.z.index_put((rows, cols), -(distance + constants))


def directions(
    inputs: tuple[torch.Tensor, ...], spans: tuple[tuple[int, int, int, int], ...], with_own: bool
) -> list[Direction]:
    """The rows of each direction: queries ``[q0, q1)``, components ``[c0, c1)``; with an own
    term, rows ``[q0, q1)`` of the component tensors are the queries' own ``(x, mu, sigma)``.

    Each input is split once at every boundary (one gradient buffer per input in the backward
    pass, where slices would each allocate a full one)."""
    queries, clean, means, stds, query_mask, component_mask = inputs
    query_cuts = {q for span in spans for q in span[:2]}
    component_cuts = {c for span in spans for c in span[2:]} | (query_cuts if with_own else set())
    take_query = _rows(queries, query_cuts)
    take_clean, take_means, take_stds = (_rows(t, component_cuts) for t in (clean, means, stds))
    out: list[Direction] = []
    for q0, q1, c0, c1 in spans:
        a, b = effective_masks(query_mask[q0:q1], component_mask[c0:c1])
        own = (take_clean(q0, q1), take_means(q0, q1), take_stds(q0, q1)) if with_own else None
        comps = take_clean(c0, c1), take_means(c0, c1), take_stds(c0, c1)
        out.append((take_query(q0, q1), own, *comps, a, b))
    return out


def _rows(tensor: torch.Tensor, cuts: set[int]) -> Callable[[int, int], torch.Tensor]:
    bounds = sorted(cuts | {0, tensor.shape[0]})
    pieces = (
        torch.split(tensor, [b - a for a, b in itertools.pairwise(bounds)])
        if len(bounds) > 2
        else (tensor,)
    )

    def take(start: int, stop: int) -> torch.Tensor:
        parts = [p for first, p in zip(bounds, pieces, strict=False) if start <= first < stop]
        if stop <= start or not parts:
            return tensor[start:stop]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return take
