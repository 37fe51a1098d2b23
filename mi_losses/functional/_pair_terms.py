"""The factors of every pair score, per block, and the chain rule back to the inputs.

Every pair score of the mixture estimators (docs/math.md) is

    z_ij = - sum_{s in P(i,j)} [ 0.5 sum_e ((y_ise - c_jse) / sigma_jse)^2 + q_is + p_js ]

with ``q`` a per-position term of the query (minus its own log-density for the mutual
information, zero for the mixture entropy) and ``p_js = sum_e log sigma_jse + E/2 log 2 pi``.
After centring every feature on a reference ``r`` and dividing it by a scale ``t`` (both
detached constants: the score does not depend on them), with ``y' = a (y - r) / t``,
``c' = (c - r) / t`` and ``w = b (t / sigma)^2``, the score is three matrix products:

    z = -0.5 y'^2 w^T  +  y' (w c')^T  +  [a , a q] [-(sum_e w c'^2 / 2 + b p) , -b]^T

over the ``K = S * E`` features (the last one over the ``S`` positions). Inactive positions
are replaced (``y, c -> 0``, ``sigma -> 1``) before any arithmetic whose derivative depends on
them, so whatever they hold is never read. The functions below are plain differentiable torch
operations: the backward pass of the streaming kernel is built from them, so it can itself be
differentiated.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


class Scaling(NamedTuple):
    """Detached per-position constants ``(S, E)``: reference ``r`` and inverse scale ``1/t``."""

    reference: torch.Tensor
    inverse_scale: torch.Tensor


def scaling(
    clean: torch.Tensor,
    means: torch.Tensor | None,
    stds: torch.Tensor,
    mask: torch.Tensor,
    dtype: torch.dtype,
) -> Scaling:
    """Mean of the active component centres ``x + mu`` and the largest active std, per position.

    Centring removes the offset that the expanded square would otherwise cancel in rounding;
    the scale keeps squares of data near ``1e30`` or ``1e-30`` inside the float range.
    """
    with torch.no_grad():
        active = mask.unsqueeze(-1)
        count = active.sum(0).to(dtype).clamp_min(1.0)
        centres = clean.to(dtype) if means is None else clean.to(dtype) + means.to(dtype)
        reference = torch.where(active, centres, 0.0).sum(0) / count
        if stds.shape[0]:
            scale = torch.where(active, stds.to(dtype), 0.0).amax(0)
        else:
            scale = torch.ones_like(reference)
        scale = torch.where((scale > 0) & torch.isfinite(scale), scale, 1.0)
        return Scaling(reference, scale.reciprocal())


class QuerySide(NamedTuple):
    """A block of queries: the left factors and what their chain rule needs."""

    square: torch.Tensor  # y'^2, (m, S, E)
    scaled: torch.Tensor  # y', (m, S, E), 0 where inactive
    extra: torch.Tensor  # [a, a q], (m, S) or (m, 2S)
    active: torch.Tensor  # a as a 0/1 float, (m, S)
    own: OwnTerm | None


class OwnTerm(NamedTuple):
    """The query's own term ``q = -(sum_e [d^2 / 2 + log sigma] + E/2 log 2 pi)``."""

    residual: torch.Tensor  # d = (y - c) / sigma, (m, S, E), 0 where inactive
    stds: torch.Tensor  # sigma, 1 where inactive
    value: torch.Tensor  # q, (m, S), 0 where inactive


def query_side(
    queries: torch.Tensor,
    mask: torch.Tensor,
    own: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    scale: Scaling,
    dtype: torch.dtype,
    values: bool = True,
) -> QuerySide:
    """Left factors for queries ``y`` ``(m, S, E)``, mask ``a`` ``(m, S)`` bool, own term.

    ``own`` is ``(clean, means, stds)`` of the same samples (the mutual information's query
    density); ``None`` for the mixture entropy. ``values=False`` leaves the own term's value
    at 0 (the chain rule does not need it; it saves the logarithms).
    """
    cols = mask.unsqueeze(-1)
    active = mask.to(dtype)
    y = queries.to(dtype)
    # Sums and differences may see inactive values (their derivatives are constants): the
    # ``where`` drops them before any product.
    scaled = torch.where(cols, y - scale.reference, 0.0) * scale.inverse_scale
    extra = [active]
    own_term = None
    if own is not None:
        clean, means, stds = own
        sigma = torch.where(cols, stds.to(dtype), 1.0)
        # (y - x) - mu, not y - (x + mu): x + mu rounds mu away when the data sit far from 0.
        residual = torch.where(cols, (y - clean.to(dtype)) - means.to(dtype), 0.0) / sigma
        if values:
            per_position = 0.5 * torch.linalg.vecdot(residual, residual) + sigma.log().sum(-1)
            value = -(per_position + queries.shape[-1] * HALF_LOG_TWO_PI) * active
        else:
            value = torch.zeros_like(active)
        own_term = OwnTerm(residual, sigma, value)
        extra.append(value)
    return QuerySide(scaled.square(), scaled, torch.cat(extra, dim=1), active, own_term)


class ComponentSide(NamedTuple):
    """A block of components: the right factors and what their chain rule needs."""

    precision: torch.Tensor  # w = b (t / sigma)^2, (n, S, E)
    weighted: torch.Tensor  # w c', (n, S, E)
    extra: torch.Tensor  # [-(sum_e w c'^2 / 2 + b p), -b], (n, S) or (n, 2S)
    scaled: torch.Tensor  # c', (n, S, E) (any finite value where inactive: w is 0 there)
    stds: torch.Tensor  # sigma, t where inactive (see component_stds)
    active: torch.Tensor  # b as a 0/1 float, (n, S)
    constants: torch.Tensor  # b p, (n, S)


def component_stds(
    stds: torch.Tensor, mask: torch.Tensor, scale: Scaling, dtype: torch.dtype
) -> torch.Tensor:
    """``sigma`` at active positions, the scale ``t`` elsewhere: ``t / sigma`` is then 1 there
    (finite whatever ``t`` is) before the mask zeroes the precision."""
    return torch.where(mask.unsqueeze(-1), stds.to(dtype), scale.inverse_scale.reciprocal())


def component_side(
    clean: torch.Tensor,
    means: torch.Tensor | None,
    stds: torch.Tensor,
    mask: torch.Tensor,
    scale: Scaling,
    dtype: torch.dtype,
    with_own: bool,
    values: bool = True,
) -> ComponentSide:
    """Right factors for components ``c = x + mu`` and ``sigma`` ``(n, S, E)``, mask ``b``.

    ``values=False`` leaves ``extra`` and ``constants`` at 0 (the chain rule does not need
    them; it saves the logarithms).
    """
    cols = mask.unsqueeze(-1)
    active = mask.to(dtype)
    sigma = component_stds(stds, mask, scale, dtype)
    # (x - r) + mu, not (x + mu) - r: x + mu rounds mu away when the data sit far from 0.
    centred = clean.to(dtype) - scale.reference
    if means is not None:
        centred = centred + means.to(dtype)
    scaled = torch.where(cols, centred, 0.0) * scale.inverse_scale
    precision = (sigma * scale.inverse_scale).pow(-2) * active.unsqueeze(-1)
    weighted = precision * scaled
    if values:
        constants = (sigma.log().sum(-1) + clean.shape[-1] * HALF_LOG_TWO_PI) * active
        extra = [-(0.5 * torch.linalg.vecdot(weighted, scaled) + constants)]
    else:
        constants = torch.zeros_like(active)
        extra = [constants]
    if with_own:
        extra.append(-active)
    return ComponentSide(
        precision, weighted, torch.cat(extra, dim=1), scaled, sigma, active, constants
    )


def scores(query: QuerySide, comp: ComponentSide) -> torch.Tensor:
    """``z_ij`` of every pair of the blocks, ``(m, n)`` (inactive pairs included)."""
    z = query.extra @ comp.extra.T
    z = torch.addmm(z, query.scaled.flatten(1), comp.weighted.flatten(1).T)
    return torch.addmm(z, query.square.flatten(1), comp.precision.flatten(1).T, alpha=-0.5)


class QueryProducts(NamedTuple):
    """The weights times the component factors: ``(m, S, E)``, ``(m, S)``."""

    precision: torch.Tensor  # sum_j w_ij w_j over the distances' weights
    weighted: torch.Tensor  # sum_j w_ij w_j c'_j over the distances' weights
    active: torch.Tensor  # sum_j w_ij b_j


def query_products(
    weights: torch.Tensor, comp: ComponentSide, distance_weights: torch.Tensor | None = None
) -> QueryProducts:
    """``dz`` ``(m, n)`` (the weights) times each component factor, for :func:`query_gradients`.

    ``distance_weights`` (default ``weights``) are the weights of the distances' expanded
    terms: zero for pairs whose distance derivatives come from their differences instead
    (:func:`mi_losses.functional._accuracy.direct_gradients`).
    """
    shape = (weights.shape[0], *comp.precision.shape[1:])
    expanded = weights if distance_weights is None else distance_weights
    return QueryProducts(
        (expanded @ comp.precision.flatten(1)).reshape(shape),
        (expanded @ comp.weighted.flatten(1)).reshape(shape),
        weights @ comp.active,
    )


def query_gradients(
    side: QuerySide, products: QueryProducts, scale: Scaling
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Chain rule from :class:`QueryProducts` to the queries and their own term (row-wise).

    Returns ``(d y, d c_own, d sigma_own)``; the last two are ``None`` without an own term
    (``d c_own`` is the gradient of both the clean embedding and the mean).
    """
    # d/dy' of -0.5 y'^2 w + y' w c'.
    grad_y = torch.addcmul(products.weighted, side.scaled, products.precision, value=-1.0)
    grad_y = grad_y * scale.inverse_scale * side.active.unsqueeze(-1)
    if side.own is None:
        return grad_y, None, None
    # The column a q meets -b: dz/dq = -sum_j w_ij b_j.
    grad_q = (-products.active * side.active).unsqueeze(-1)
    residual, sigma = side.own.residual, side.own.stds
    # q = -sum_e (d^2 / 2 + log sigma), d = (y - c) / sigma.
    through_residual = grad_q * residual / sigma
    grad_y = grad_y - through_residual
    grad_sigma = grad_q * (residual.square() - 1.0) / sigma
    return grad_y, through_residual, grad_sigma


class ComponentProducts(NamedTuple):
    """The weights times the query factors, summed over query blocks."""

    squares: torch.Tensor  # sum_i w_ij y'_i^2, (n, S, E)
    scaled: torch.Tensor  # sum_i w_ij y'_i, (n, S, E)
    distance_active: torch.Tensor  # sum_i w_ij a_i over the distances' weights, (n, S)
    active: torch.Tensor  # sum_i w_ij a_i, (n, S)


def component_products(
    weights: torch.Tensor, query: QuerySide, distance_weights: torch.Tensor | None = None
) -> ComponentProducts:
    """``dz`` ``(m, n)`` (the weights) times each query factor, for :func:`component_gradients`
    (``distance_weights`` as in :func:`query_products`)."""
    shape = (weights.shape[1], *query.scaled.shape[1:])
    expanded = weights if distance_weights is None else distance_weights
    active = weights.T @ query.active
    return ComponentProducts(
        (expanded.T @ query.square.flatten(1)).reshape(shape),
        (expanded.T @ query.scaled.flatten(1)).reshape(shape),
        active if distance_weights is None else expanded.T @ query.active,
        active,
    )


def component_gradients(
    side: ComponentSide, products: ComponentProducts, scale: Scaling
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain rule from :class:`ComponentProducts` to the centres ``c = x + mu`` and ``sigma``.

    With ``P = sum_i w_ij y'^2``, ``Q = sum_i w_ij y'`` and ``G = sum_i w_ij a_i`` the
    component's part of ``sum_ij w_ij z_ij`` is
    ``sum [-w P / 2 + w c' Q - G w c'^2 / 2] - G b p`` (``G`` from the distances' weights in
    the first sum).
    """
    squares, linear = products.squares, products.scaled
    grad_distance = products.distance_active.unsqueeze(-1)
    grad_constant = products.active.unsqueeze(-1)
    scaled, precision, sigma = side.scaled, side.precision, side.stds
    grad_centre = precision * scale.inverse_scale * (linear - grad_distance * scaled)
    grad_sigma = (precision / sigma) * (
        squares - 2.0 * linear * scaled + grad_distance * scaled.square()
    ) - grad_constant * side.active.unsqueeze(-1) / sigma
    return grad_centre, grad_sigma
