"""The chain rule from the factors' gradients back to the inputs, written out (first order,
no graph, fused multiply-adds in place): what the streaming and Triton backward passes end with.
Inactive positions get exact zeros."""

from __future__ import annotations

from typing import NamedTuple

import torch

from mi_losses.kernels.directions import Direction
from mi_losses.kernels.factors import Components, Frame, Queries, Sides


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


class OwnGrads(NamedTuple):
    """Gradients of the queries' own terms: ``minus_centres`` is ``-d x = -d mu``."""

    minus_centres: torch.Tensor
    stds: torch.Tensor


class QueryGrads(NamedTuple):
    """Gradients of one direction's query inputs, ``(m, S, E)`` in the compute dtype."""

    queries: torch.Tensor
    own: OwnGrads | None


class ComponentGrads(NamedTuple):
    """Gradients of one direction's component inputs, ``(n, S, E)``; ``d mu = d x``."""

    centres: torch.Tensor
    stds: torch.Tensor


def chain_queries(
    s: Queries, f: Frame, shape: torch.Size, d_y: torch.Tensor, d_y2: torch.Tensor,
    d_q: torch.Tensor | None,
) -> QueryGrads:  # fmt: skip
    """The chain rule from the query factors' gradients (:class:`Grads` ``y``, ``y2``, ``q``)
    back to the inputs ``shape`` ``(m, S, E)``, written out (first order, no graph; ``d_y`` is
    overwritten). Inactive positions get exact zeros (their values are never read)."""
    with torch.no_grad():
        grad = d_y.addcmul_(s.y, d_y2, value=-1.0).view(shape).mul_(f.inverse)
        grad.mul_(s.a.unsqueeze(-1))
        if s.own is None:
            return QueryGrads(grad, None)
        assert d_q is not None
        own = chain_own(*s.own, s.a, d_q)
        return QueryGrads(grad.add_(own.minus_centres), own)


def chain_own(
    residual: torch.Tensor, sigma_i: torch.Tensor, a: torch.Tensor, d_q: torch.Tensor
) -> OwnGrads:
    """The chain rule of the own term ``q = -a (|r|^2 / 2 + sum log sigma_i + ...)``,
    ``r = (y - x - mu) / sigma_i``, from its gradient ``d_q`` ``(m, S)``; ``-d x = d y``."""
    with torch.no_grad():
        scaled = (d_q * -a).unsqueeze(-1) / sigma_i  # d_own / sigma_i
        d_residual = scaled * residual  # d r / sigma_i
        # d sigma_i = (d_own / sigma_i) (1 - r^2)
        return OwnGrads(d_residual, scaled.addcmul_(d_residual, residual, value=-1.0))


def chain_components(
    s: Components, f: Frame, shape: torch.Size, d_w: torch.Tensor, d_wc: torch.Tensor,
    d_k: torch.Tensor,
) -> ComponentGrads:  # fmt: skip
    """The chain rule from the component factors' gradients (:class:`Grads` ``w``, ``wc``,
    ``k``) back to the inputs ``shape`` ``(n, S, E)``, written out like :func:`chain_queries`
    (``d_wc`` is overwritten)."""
    with torch.no_grad():
        inverse = f.inverse
        w, c, d_wc = s.w.view(shape), s.c.view(shape), d_wc.view(shape)
        d_k = d_k.unsqueeze(-1)
        # d w: from -y'^2 w / 2, from w c', from h = sum w c'^2 / 2 (k = -(h + b p)):
        # d_wc c - (d_w + d_k c^2) / 2 = c (d_wc - d_k c / 2) - d_w / 2.
        d_precision = torch.addcmul(d_wc, d_k, c, value=-0.5).mul_(c)
        d_precision.add_(d_w.view(shape), alpha=-0.5)
        d_x = d_wc.addcmul_(d_k, c, value=-1.0).mul_(w).mul_(inverse)  # 0 where inactive
        # w = (t / sigma)^2 and p = sum log(sigma / t): d sigma = -(2 w d_w + d_p) / sigma,
        # with t / sigma = sqrt(w) (0 where inactive).
        d_sigma = d_precision.mul_(w).mul_(2.0).add_(d_k).mul_(w.sqrt()).mul_(-inverse)
        return ComponentGrads(d_x, d_sigma)


def chain(inputs: Direction, s: Sides, d: Grads) -> tuple[QueryGrads, ComponentGrads]:
    """:func:`chain_queries` and :func:`chain_components` of one direction."""
    return (
        chain_queries(s.queries, s.frame, inputs.queries.shape, d.y, d.y2, d.q),
        chain_components(s.components, s.frame, inputs.clean.shape, d.w, d.wc, d.k),
    )
