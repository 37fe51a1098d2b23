"""The pair scores as matrix products of per-sample factors, their chain rule; helpers every
path shares.

Every mixture estimator reduces, per query ``i``, the pair scores (docs/math.md)

    z_ij = - sum_{s in P(i,j)} [ 0.5 sum_e ((y_ise - c_jse) / sigma_jse)^2 + q_is + p_js ]

with ``q`` the query's own term (minus its log-density, mutual information; 0 for the mixture
entropy) and ``p_js = sum_e log sigma_jse + E/2 log 2 pi``. Features are centred on a detached
reference ``r`` and divided by a detached scale ``t`` (the :class:`Frame`; the score does not
depend on them): ``y' = a (y - r) / t``, ``c' = (c - r) / t``, ``w = b (t / sigma)^2``. Then

    z = -y'^2 w^T / 2 + y' (w c')^T + a k^T - (a q) b^T,        k = -(h + b p),  h = sum_e w c'^2 / 2

(:func:`pair_sums`; the Triton kernels read the same as one product ``L R^T`` of
concatenated factors). :func:`chain` carries the factors' gradients back to the inputs.
Inactive positions are replaced (``y, c -> 0``, ``sigma -> inf``) before any arithmetic whose
derivative depends on them: they are never read."""

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


class Frame(NamedTuple):
    """The detached per-feature frame of a direction, ``(S, E)``: features are centred on
    ``reference`` (the mean active component centre) and divided by the scale ``t`` (the largest
    active component std); ``constant`` ``(S,)`` is ``sum_e log t + E/2 log 2 pi``."""

    reference: torch.Tensor
    inverse: torch.Tensor  # 1 / t
    constant: torch.Tensor


class Sides(NamedTuple):
    """The factors of one direction (``m`` queries, ``n`` components, ``S`` positions,
    ``F = S E`` features); the scores are ``z = -y2 w^T / 2 + y wc^T + a k^T - q b^T``.
    Without ``values`` (the backward pass) ``q``, ``k``, ``p``, ``h`` and the rounding check's
    ``squares`` and ``largest`` are ``None``."""

    y: torch.Tensor  # y', (m, F)
    y2: torch.Tensor  # y'^2, (m, F)
    a: torch.Tensor  # query mask as 0/1, (m, S)
    w: torch.Tensor  # w = (t / sigma)^2, 0 where inactive, (n, F)
    wc: torch.Tensor  # w c', (n, F)
    c: torch.Tensor  # c', (n, F)
    b: torch.Tensor  # component mask as 0/1, (n, S)
    frame: Frame
    own: tuple[torch.Tensor, torch.Tensor] | None  # residual r and sigma_i, (m, S, E); or None
    q: torch.Tensor | None = None  # a q (the own term), (m, S)
    k: torch.Tensor | None = None  # -(h + b p), (n, S)
    p: torch.Tensor | None = None  # b p, (n, S)
    h: torch.Tensor | None = None  # h, (n, S)
    squares: torch.Tensor | None = None  # |y'|^2, (m,)
    largest: torch.Tensor | None = None  # max_k w, (n,)

    def columns(self, start: int, stop: int) -> Sides:
        """The same factors restricted to components ``[start, stop)``."""
        if start == 0 and stop == self.w.shape[0]:
            return self
        cut = slice(start, stop)

        def rows(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[cut]

        return self._replace(
            w=self.w[cut], wc=self.wc[cut], c=self.c[cut], b=self.b[cut], k=rows(self.k),
            p=rows(self.p), h=rows(self.h), largest=rows(self.largest),
        )  # fmt: skip

    @property
    def left(self) -> torch.Tensor:
        """``L = [y'^2, y', a, a q]`` ``(m, 2F + 2S)``: ``z = L R^T`` (the Triton kernels' form)."""
        q = self.q if self.q is not None else torch.zeros_like(self.a)
        return torch.cat([self.y2, self.y, self.a, q], 1)

    @property
    def right(self) -> torch.Tensor:
        """``R = [-w/2, w c', -(h + b p), -b]`` ``(n, 2F + 2S)``."""
        assert self.k is not None
        return torch.cat([-0.5 * self.w, self.wc, self.k, -self.b], 1)


class Grads(NamedTuple):
    """Gradients of a loss with respect to the factors ``y, q, wc, k`` of :class:`Sides`
    (``q`` ``None`` without an own term); for ``y2`` and ``w`` (which enter the scores as
    ``-y2 w^T / 2``) ``-2`` times the gradients, the products ``G w`` and ``G^T y2``."""

    y: torch.Tensor
    y2: torch.Tensor
    q: torch.Tensor | None
    w: torch.Tensor
    wc: torch.Tensor
    k: torch.Tensor


def frame(
    clean: torch.Tensor, means: torch.Tensor | None, stds: torch.Tensor, b: torch.Tensor,
    dtype: torch.dtype,
) -> Frame:  # fmt: skip
    """The :class:`Frame` of components ``x + mu``, ``sigma`` ``(n, S, E)`` active at ``b``."""
    off = (~b).unsqueeze(-1)
    with torch.no_grad():
        x = clean.to(dtype)
        centres = (x if means is None else x + means.to(dtype)).masked_fill(off, 0.0)
        count = b.sum(0, dtype=dtype).clamp_min(1.0)
        reference = centres.sum(0) / count.unsqueeze(-1)
        if clean.shape[0]:
            scale = stds.to(dtype).masked_fill(off, 0.0).amax(0)
        else:
            scale = torch.ones_like(reference)
        scale = scale.masked_fill(scale <= 0, 1.0)
        constant = scale.log().sum(-1) + clean.shape[-1] * HALF_LOG_TWO_PI
        return Frame(reference, scale.reciprocal(), constant)


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
    values: bool = True,
    frame_: Frame | None = None,
) -> Sides:
    """Factors of queries ``y`` ``(m, S, E)`` and components ``c = x + mu``, ``sigma``
    ``(n, S, E)`` with effective bool masks ``a`` ``(m, S)``, ``b`` ``(n, S)``; ``own`` is the
    queries' ``(x, mu, sigma)`` (mutual information) or ``None``. Differentiable to any order.
    ``check=False`` leaves out what only the rounding check needs, ``values=False`` all that
    only the scores' values need (the backward pass); ``frame_`` a :class:`Frame` made before."""
    e = queries.shape[-1]
    off_rows, off_cols = (~a).unsqueeze(-1), (~b).unsqueeze(-1)
    a_, b_ = a.to(dtype), b.to(dtype)
    y, x, sigma = queries.to(dtype), clean.to(dtype), stds.to(dtype)
    f = frame_ if frame_ is not None else frame(clean, means, stds, b, dtype)
    # Differences before masks (their derivatives are constants), masks before any product.
    scaled_y = ((y - f.reference).masked_fill(off_rows, 0.0) * f.inverse).flatten(1)
    # (x - r) + mu, not (x + mu) - r: x + mu rounds mu away when the data sit far from 0.
    centred = x - f.reference if means is None else (x - f.reference) + means.to(dtype)
    scaled_c = centred.masked_fill(off_cols, 0.0) * f.inverse
    ratio = (sigma * f.inverse).masked_fill(off_cols, math.inf)  # sigma / t, inf where inactive
    precision = ratio.pow(-2)  # w, 0 where inactive
    weighted = precision * scaled_c
    residual = None
    if own is not None:
        own_x, own_mu, own_sigma = (t.to(dtype) for t in own)
        sigma_i = own_sigma.masked_fill(off_rows, 1.0)
        # (y - x) - mu, not y - (x + mu), for the same reason.
        residual = (((y - own_x) - own_mu).masked_fill(off_rows, 0.0) / sigma_i, sigma_i)
    s = Sides(
        scaled_y, scaled_y.square(), a_, precision.flatten(1), weighted.flatten(1),
        scaled_c.flatten(1), b_, f, residual,
    )  # fmt: skip
    if not values:
        return s
    h = 0.5 * torch.linalg.vecdot(weighted, scaled_c)
    # log(sigma / t) summed over E: inf where inactive, replaced by 0 (then b p).
    p = ratio.log().sum(-1).masked_fill(~b, 0.0) + b_ * f.constant
    q = None
    if residual is not None:
        r, sigma_i = residual
        per_position = 0.5 * torch.linalg.vecdot(r, r) + sigma_i.log().sum(-1)
        q = (per_position + e * HALF_LOG_TWO_PI) * -a_
    squares = largest = None
    if check:
        with torch.no_grad():
            squares = s.y2.sum(-1)
            largest = s.w.amax(-1) if s.w[0:1].numel() else h.sum(-1)
    return s._replace(q=q, k=-(h + p), p=p, h=h, squares=squares, largest=largest)


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
    halves: torch.Tensor | None  # sum_P h_js (rounding check)
    squares: torch.Tensor | None  # |y'_i|^2, (m,) (rounding check)
    largest: torch.Tensor | None  # max w_j, (n,) (rounding check)


def pair_sums(s: Sides, check: bool, constants: bool = False) -> Sums:
    """The :class:`Sums` of the pairs of ``s``; ``constants`` (implied by ``check``) also the
    pair sums of ``p``."""
    assert s.k is not None and s.p is not None
    z = torch.addmm(torch.addmm(s.a @ s.k.T, s.y2, s.w.T, alpha=-0.5), s.y, s.wc.T)
    own = None
    if s.q is not None:
        own_sum = s.q @ s.b.T
        z = z - own_sum
        own = own_sum.detach()
    with torch.no_grad():
        count = s.a @ s.b.T
        sums = s.a @ s.p.T if check or constants else None
        if not check:
            return Sums(z, count, sums, own, None, None, None)
        assert s.h is not None
        return Sums(z, count, sums, own, s.a @ s.h.T, s.squares, s.largest)


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
        plus(total.own, part.own), plus(total.halves, part.halves),
        plus(total.squares, part.squares), largest,
    )  # fmt: skip


def finish(t: Sums, check: bool) -> Scores:
    """The :class:`Scores` of a block from its sums over all positions."""
    with torch.no_grad():
        valid = t.positions > 0
        invalid = ~valid
        excess = None
        if check:
            assert t.constants is not None and t.squares is not None
            assert t.largest is not None and t.halves is not None
            dtype = t.z.dtype
            relative, absolute = TOLERANCES[dtype]
            # eps |magnitude| / 2 - relative |distance| - absolute, in place.
            distance = t.z + t.constants if t.own is None else (t.z + t.constants).add_(t.own)
            error = torch.addcmul(t.halves, t.squares.unsqueeze(-1), t.largest)
            error.mul_(0.5 * torch.finfo(dtype).eps).sub_(distance.abs_(), alpha=relative)
            excess = error.sub_(absolute).nan_to_num_(nan=math.inf).masked_fill_(invalid, -math.inf)
    return Scores(t.z.masked_fill(invalid, -math.inf), valid, t.constants, t.own, excess)


def scores(s: Sides, check: bool, constants: bool = False) -> Scores:
    """The scores of every pair of ``s`` (with a graph when the factors have one);
    ``constants`` (implied by ``check``) also gives the pair sums of ``p``."""
    return finish(pair_sums(s, check, constants), check)


def statistics(block: Scores) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax-weighted ``(sum_j w z, sum_j w own, sum_j w constants)`` per query (detached;
    normalised by the sum of the weights, not by a rounded ``logsumexp``)."""
    assert block.constants is not None
    with torch.no_grad():
        peak = block.z.amax(-1, keepdim=True) if block.z.shape[-1] else block.z.sum(-1, True)
        e = exp_normal(block.z - torch.where(torch.isfinite(peak), peak, 0.0))
        total = e.sum(-1).clamp_min(torch.finfo(e.dtype).tiny)
        z = torch.where(block.valid, block.z, 0.0)
        own = (e * block.own).sum(-1) if block.own is not None else torch.zeros_like(total)
        sums = torch.stack([(e * z).sum(-1), own, (e * block.constants).sum(-1)])
        return tuple(sums / total)


def chain(
    inputs: Direction, s: Sides, d: Grads
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...]]:
    """The chain rule from the factors' gradients ``d`` back to one direction's inputs, written
    out (first order, no graph, fused multiply-adds in place): ``(d queries, own, components)``
    in the compute dtype, ``components = (d x, d sigma)`` (``d mu = d x``) and
    ``own = (-d x, d sigma)`` of the queries' own terms (``None`` without). Inactive positions
    get exact zeros (their values are never read)."""
    queries = inputs[0]
    shape_m, shape_n = (s.y.shape[0], *queries.shape[1:]), (s.w.shape[0], *queries.shape[1:])
    with torch.no_grad():
        inverse = s.frame.inverse
        w, c, d_wc = s.w.view(shape_n), s.c.view(shape_n), d.wc.view(shape_n)
        d_k = d.k.unsqueeze(-1)
        # d w: from -y'^2 w / 2, from w c', from h = sum w c'^2 / 2 (k = -(h + b p)):
        # d_wc c - (d.w + d_k c^2) / 2 = c (d_wc - d_k c / 2) - d.w / 2.
        d_w = torch.addcmul(d_wc, d_k, c, value=-0.5).mul_(c).add_(d.w.view(shape_n), alpha=-0.5)
        d_x = torch.addcmul(d_wc, d_k, c, value=-1.0).mul_(w).mul_(inverse)  # 0 where inactive
        # w = (t / sigma)^2 and p = sum log(sigma / t): d sigma = -(2 w d_w + d_p) / sigma,
        # with t / sigma = sqrt(w) (0 where inactive).
        d_sigma = torch.addcmul(d_k, w, d_w, value=2.0).mul_(w.sqrt()).mul_(-inverse)
        d_y = torch.addcmul(d.y, s.y, d.y2, value=-1.0).view(shape_m).mul_(inverse)
        d_y.mul_(s.a.unsqueeze(-1))
        d_own = None
        if s.own is not None:
            assert d.q is not None
            residual, sigma_i = s.own
            # q = -a (|r|^2 / 2 + sum log sigma_i + ...), r = (y - x - mu) / sigma_i.
            d_q = (d.q * -s.a).unsqueeze(-1)
            d_residual = (d_q * residual).div_(sigma_i)
            d_y += d_residual
            d_own = (d_residual, torch.addcmul(d_q / sigma_i, d_residual, residual, value=-1.0))
    return d_y, d_own, (d_x, d_sigma)


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
    assert s.p is not None
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
