"""The pair scores as matrix products of per-sample factors.

Every mixture estimator reduces, per query ``i``, the pair scores (docs/math.md)

    z_ij = - sum_{s in P(i,j)} [ 0.5 sum_e ((y_ise - c_jse) / sigma_jse)^2 + q_is + p_js ]

with ``q`` the query's own term (minus its log-density, mutual information; 0 for the mixture
entropy) and ``p_js = sum_e log sigma_jse + E/2 log 2 pi``. Features are centred on a detached
reference ``r`` and divided by a detached scale ``t`` (the :class:`Frame`; the score does not
depend on them): ``y' = a (y - r) / t``, ``c' = (c - r) / t``, ``w = b (t / sigma)^2``. Then

    z = -y'^2 w^T / 2 + y' (w c')^T + a k^T - (a q) b^T,        k = -(h2 / 2 + b p),  h2 = sum_e w c'^2

(:func:`pair_sums`; the Triton kernels read the same as one product ``L R^T`` of
concatenated factors); :mod:`~mi_losses.kernels.chain` carries the factors' gradients back to
the inputs.
Inactive positions are replaced (``y, c -> 0``, ``sigma -> inf``) before any arithmetic whose
derivative depends on them: they are never read."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mi_losses.kernels.directions import Own

HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


class Frame(NamedTuple):
    """The detached per-feature frame of a direction, ``(S, E)``: features are centred on
    ``reference`` (the mean active component centre) and divided by the scale ``t`` (the largest
    active component std); ``constant`` ``(S,)`` is ``sum_e log t + E/2 log 2 pi``."""

    reference: torch.Tensor
    inverse: torch.Tensor  # 1 / t
    constant: torch.Tensor

    def positions(self, start: int, stop: int) -> Frame:
        """The frame of positions ``[start, stop)``."""
        return Frame(*(t[start:stop] for t in self))


class Queries(NamedTuple):
    """The query factors (``m`` queries, ``S`` positions, ``F = S E`` features). Without
    ``values`` (the backward pass) ``q`` and ``squares`` are ``None``."""

    y: torch.Tensor  # y', (m, F)
    y2: torch.Tensor  # y'^2, (m, F)
    a: torch.Tensor  # query mask as 0/1, (m, S)
    own: tuple[torch.Tensor, torch.Tensor] | None  # residual r and sigma_i, (m, S, E); or None
    q: torch.Tensor | None = None  # a q (the own term), (m, S)
    squares: torch.Tensor | None = None  # |y'|^2, (m,) (rounding check)


class Components(NamedTuple):
    """The component factors (``n`` components). Without ``values`` (the backward pass) ``k``,
    ``p``, ``h2`` and ``largest`` are ``None``."""

    w: torch.Tensor  # w = (t / sigma)^2, 0 where inactive, (n, F)
    wc: torch.Tensor  # w c', (n, F)
    c: torch.Tensor  # c', (n, S, E)
    b: torch.Tensor  # component mask as 0/1, (n, S)
    ratio: torch.Tensor | None = None  # sigma / t, 1 where inactive, (n, S, E)
    k: torch.Tensor | None = None  # -(h2 / 2 + b p), (n, S)
    p: torch.Tensor | None = None  # b p, (n, S)
    h2: torch.Tensor | None = None  # h2 = sum_e w c'^2, (n, S)
    largest: torch.Tensor | None = None  # max_k w, (n,) (rounding check)

    def rows(self, start: int, stop: int) -> Components:
        """The factors of components ``[start, stop)``."""
        if start == 0 and stop == self.w.shape[0]:
            return self

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:stop]

        return Components(*(cut(t) for t in self))  # type: ignore[arg-type]


class Sides(NamedTuple):
    """The factors of one direction: the scores are ``z = -y2 w^T / 2 + y wc^T + a k^T - q b^T``."""

    queries: Queries
    components: Components
    frame: Frame

    def columns(self, start: int, stop: int) -> Sides:
        """The same factors restricted to components ``[start, stop)``."""
        return Sides(self.queries, self.components.rows(start, stop), self.frame)

    @property
    def left(self) -> torch.Tensor:
        """``L = [y'^2, y', a, a q]`` ``(m, 2F + 2S)``: ``z = L R^T`` (the Triton kernels' form)."""
        s = self.queries
        q = s.q if s.q is not None else torch.zeros_like(s.a)
        return torch.cat([s.y2, s.y, s.a, q], 1)

    @property
    def right(self) -> torch.Tensor:
        """``R = [-w/2, w c', -(h2 / 2 + b p), -b]`` ``(n, 2F + 2S)``."""
        s = self.components
        assert s.k is not None
        return torch.cat([-0.5 * s.w, s.wc, s.k, -s.b], 1)


def keep(t: torch.Tensor, mask: torch.Tensor | None, fill: float = 0.0) -> torch.Tensor:
    """``t`` where the 0/1 ``mask`` (broadcast to it) is 1, ``fill`` elsewhere, whatever ``t``
    holds there (NaN and inf included): a product and a NaN replacement, each one vectorised
    pass (a broadcast boolean ``where`` is about three times slower on CPU; compiled, one
    ``where`` fuses into the loops around it). ``mask`` ``None``: every position is active,
    ``t`` itself. Differentiable."""
    if mask is None:
        return t
    if torch.compiler.is_compiling():
        return torch.where(mask > 0, t, fill)
    # The product and the sum, not one addcmul: with a broadcast input it ran twice slower.
    kept = t * mask if fill == 0.0 else (t * mask).add_(1.0 - mask, alpha=fill)
    return kept.nan_to_num_(fill, math.inf, -math.inf)


def frame(
    clean: torch.Tensor, means: torch.Tensor | None, stds: torch.Tensor,
    active: torch.Tensor | None, dtype: torch.dtype,
) -> Frame:  # fmt: skip
    """The :class:`Frame` of components ``x + mu``, ``sigma`` ``(n, S, E)`` active at the 0/1
    ``active`` ``(n, S, 1)`` (``None``: all of them)."""
    with torch.no_grad():
        centres = clean.to(dtype) if means is None else clean.to(dtype) + means.to(dtype)
        if active is None:
            reference = centres.mean(0)
        else:
            reference = keep(centres, active).sum(0).div_(active.sum(0).clamp_min_(1.0))
        if clean.shape[0]:  # tiny where no component is active (no query is either): unread
            scale = keep(stds.to(dtype), active).amax(0).clamp_min_(torch.finfo(dtype).tiny)
        else:
            scale = torch.ones_like(reference)
        constant = scale.log().sum(-1).add_(clean.shape[-1] * HALF_LOG_TWO_PI)
        return Frame(reference, scale.reciprocal_(), constant)


def query_factors(
    queries: torch.Tensor, own: Own | None, a: torch.Tensor, f: Frame, dtype: torch.dtype, *,
    check: bool = True, values: bool = True, dense: bool = False,
) -> Queries:  # fmt: skip
    """The :class:`Queries` of ``y`` ``(m, S, E)`` active at ``a`` ``(m, S)`` (bool) in frame
    ``f``; ``dense``: ``a`` is true everywhere (no position to replace)."""
    on = a.to(dtype)
    # Differences before masks (their derivatives are constants), masks before any product.
    active = None if dense else on.unsqueeze(-1)
    scaled_y = keep(queries.to(dtype) - f.reference, active).mul_(f.inverse).flatten(1)
    residual = None if own is None else own_residual(queries, own, active, dtype)
    s = Queries(scaled_y, scaled_y.square(), on, residual)
    if not values:
        return s
    q = None if residual is None else own_term(*residual, on)
    squares = None
    if check:
        with torch.no_grad():
            squares = s.y2.sum(-1)
    return s._replace(q=q, squares=squares)


def own_term(residual: torch.Tensor, sigma_i: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """The own term ``a q = -(|r|^2 / 2 + sum_e log sigma_i) - a E/2 log 2 pi`` ``(m, S)`` from
    :func:`own_residual` (``r = 0``, ``sigma_i = 1`` where inactive) and the 0/1 mask ``on``."""
    q = sigma_i.log().addcmul_(residual, residual, value=0.5).sum(-1)
    return q.add_(on, alpha=residual.shape[-1] * HALF_LOG_TWO_PI).neg_()


def own_residual(
    queries: torch.Tensor, own: Own, active: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The queries' own residual ``r = (y - x - mu) / sigma_i`` and ``sigma_i`` ``(m, S, E)``
    (``0`` and ``1`` where inactive); ``active`` the query mask as 0/1 ``(m, S, 1)``
    (``None``: all active)."""
    own_x, own_mu, own_sigma = (t.to(dtype) for t in own)
    sigma_i = keep(own_sigma, active, 1.0)
    # (y - x) - mu, not y - (x + mu): x + mu rounds mu away when the data sit far from 0.
    return keep((queries.to(dtype) - own_x).sub_(own_mu), active) / sigma_i, sigma_i


def component_factors(
    clean: torch.Tensor, means: torch.Tensor | None, stds: torch.Tensor, b: torch.Tensor,
    f: Frame, dtype: torch.dtype, *, check: bool = True, values: bool = True,
    active: torch.Tensor | None = None, dense: bool = False,
) -> Components:  # fmt: skip
    """The :class:`Components` of centres ``x + mu``, stds ``sigma`` ``(n, S, E)`` active at
    ``b`` ``(n, S)`` (bool) in frame ``f``; ``active``: ``b`` as 0/1 ``(n, S, 1)`` if made;
    ``dense``: ``b`` is true everywhere (no position to replace)."""
    if active is None:
        active = b.to(dtype).unsqueeze(-1)
    mask = None if dense else active
    # (x - r) + mu, not (x + mu) - r: x + mu rounds mu away when the data sit far from 0.
    centred = clean.to(dtype) - f.reference
    if means is not None:
        centred = centred.add_(means.to(dtype))
    scaled_c = keep(centred, mask).mul_(f.inverse)
    # sigma / t, 1 where inactive (the product before the mask: its derivative is a constant)
    ratio = keep(stds.to(dtype) * f.inverse, mask, 1.0)
    precision = ratio.pow(-2)  # w = (t / sigma)^2, 0 where inactive
    if mask is not None:
        precision = precision.mul_(mask)
    weighted = precision * scaled_c
    on = active.squeeze(-1)
    s = Components(precision.flatten(1), weighted.flatten(1), scaled_c, on, ratio)
    if not values:
        return s
    h2 = torch.linalg.vecdot(weighted, scaled_c)
    p = ratio.log().sum(-1).addcmul_(on, f.constant)  # b (sum_e log sigma + E/2 log 2 pi)
    largest = None
    if check:
        with torch.no_grad():
            largest = s.w.amax(-1) if s.w.shape[1] else h2.sum(-1)
    return s._replace(k=torch.add(p, h2, alpha=0.5).neg_(), p=p, h2=h2, largest=largest)


def sides(
    queries: torch.Tensor,
    own: Own | None,
    clean: torch.Tensor,
    means: torch.Tensor | None,
    stds: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    dtype: torch.dtype,
    *,
    check: bool = True,
    values: bool = True,
    frame_: Frame | None = None,
    dense: bool = False,
) -> Sides:
    """Factors of queries ``y`` ``(m, S, E)`` and components ``c = x + mu``, ``sigma``
    ``(n, S, E)`` with effective bool masks ``a`` ``(m, S)``, ``b`` ``(n, S)``; ``own`` is the
    queries' :class:`Own` (mutual information) or ``None``. Differentiable to any order.
    ``check=False`` leaves out what only the rounding check needs, ``values=False`` all that
    only the scores' values need (the backward pass); ``frame_`` a :class:`Frame` made before;
    ``dense``: ``a`` and ``b`` are true everywhere (no position to replace)."""
    active = b.to(dtype).unsqueeze(-1)
    if frame_ is None:
        frame_ = frame(clean, means, stds, None if dense else active, dtype)
    components = component_factors(
        clean, means, stds, b, frame_, dtype, check=check, values=values, active=active,
        dense=dense,
    )  # fmt: skip
    queries_ = query_factors(
        queries, own, a, frame_, dtype, check=check, values=values, dense=dense
    )
    return Sides(queries_, components, frame_)
