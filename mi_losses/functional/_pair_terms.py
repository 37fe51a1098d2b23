"""The two factors of every pair score, per block, and the chain rule back to the inputs.

Every pair score of the mixture estimators (docs/math.md) is

    z_ij = - sum_{s in P(i,j)} [ 0.5 sum_e ((y_ise - c_jse) / sigma_jse)^2 + q_is + p_js ]

with ``q`` a per-position term of the query (minus its own log-density for the mutual
information, zero for the mixture entropy) and ``p_js = sum_e log sigma_jse + E/2 log 2 pi``.
After centring every feature on a reference ``r`` and dividing it by a scale ``t`` (both
detached constants: the score does not depend on them), with ``y' = a (y - r) / t``,
``c' = b (c - r) / t`` and ``w = b (t / sigma)^2``, the score is one dot product
``z_ij = L_i . R_j`` of

    L_i = [ y'^2 , y' , a , a q ]                                   (K, K, S, S columns)
    R_j = [ -w / 2 , w c' , -(sum_e w c'^2 / 2 + b p) , -b ]

(``K = S * E``), a matrix product over blocks of queries and components. Inactive positions
are replaced (``y, c -> 0``, ``sigma -> 1``) before any arithmetic, so whatever they hold is
never read. The functions below are plain differentiable torch operations: the backward pass of
the streaming kernel is built from them, so it can itself be differentiated.
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
    centres: torch.Tensor, stds: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype
) -> Scaling:
    """Mean of the active component centres and the largest active std, per position.

    Centring removes the offset that the expanded square would otherwise cancel in rounding;
    the scale keeps squares of data near ``1e30`` or ``1e-30`` inside the float range.
    """
    with torch.no_grad():
        active = mask.unsqueeze(-1)
        count = active.sum(0).to(dtype).clamp_min(1.0)
        reference = torch.where(active, centres.to(dtype), 0.0).sum(0) / count
        scale = torch.where(active, stds.to(dtype), 0.0).amax(0) if stds.shape[0] else None
        if scale is None:
            scale = torch.ones_like(reference)
        scale = torch.where((scale > 0) & torch.isfinite(scale), scale, 1.0)
        return Scaling(reference, scale.reciprocal())


class QuerySide(NamedTuple):
    """A block of queries: the left factor and what its chain rule needs."""

    left: torch.Tensor  # (m, 2K + 2S)
    scaled: torch.Tensor  # y', (m, S, E)
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
) -> QuerySide:
    """``L`` for queries ``y`` ``(m, S, E)``, mask ``a`` ``(m, S)`` bool, optional own term.

    ``own`` is ``(clean, means, stds)`` of the same samples (the mutual information's query
    density); ``None`` for the mixture entropy.
    """
    cols = mask.unsqueeze(-1)
    active = mask.to(dtype)
    y = torch.where(cols, queries.to(dtype), 0.0)
    scaled = (y - scale.reference) * scale.inverse_scale * active.unsqueeze(-1)
    own_term = None
    columns = [scaled.square().flatten(1), scaled.flatten(1), active]
    if own is not None:
        clean, means, stds = own
        sigma = torch.where(cols, stds.to(dtype), 1.0)
        clean_, means_ = (
            torch.where(cols, clean.to(dtype), 0.0),
            torch.where(cols, means.to(dtype), 0.0),
        )
        # (y - x) - mu, not y - (x + mu): x + mu rounds mu away when the data sit far from 0.
        residual = ((y - clean_) - means_) / sigma
        per_position = (0.5 * residual.square() + sigma.log()).sum(-1)
        value = -(per_position + queries.shape[-1] * HALF_LOG_TWO_PI) * active
        own_term = OwnTerm(residual, sigma, value)
        columns.append(value)
    return QuerySide(torch.cat(columns, dim=1), scaled, active, own_term)


class ComponentSide(NamedTuple):
    """A block of components: the right factor and what its chain rule needs."""

    right: torch.Tensor  # (n, 2K + 2S)
    scaled: torch.Tensor  # c', (n, S, E)
    precision: torch.Tensor  # w = b (t / sigma)^2, (n, S, E)
    stds: torch.Tensor  # sigma, 1 where inactive
    active: torch.Tensor  # b as a 0/1 float, (n, S)
    constants: torch.Tensor  # b p, (n, S)


def component_side(
    clean: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    mask: torch.Tensor,
    scale: Scaling,
    dtype: torch.dtype,
    with_own: bool,
) -> ComponentSide:
    """``R`` for components ``c = x + mu`` and ``sigma`` ``(n, S, E)``, mask ``b`` ``(n, S)``."""
    cols = mask.unsqueeze(-1)
    active = mask.to(dtype)
    sigma = torch.where(cols, stds.to(dtype), 1.0)
    clean_, means_ = (
        torch.where(cols, clean.to(dtype), 0.0),
        torch.where(cols, means.to(dtype), 0.0),
    )
    # (x - r) + mu, not (x + mu) - r: x + mu rounds mu away when the data sit far from 0.
    centred = (clean_ - scale.reference) + means_
    scaled = centred * scale.inverse_scale
    scaled = scaled * active.unsqueeze(-1)
    relative = torch.where(cols, sigma * scale.inverse_scale, 1.0)
    precision = relative.square().reciprocal() * active.unsqueeze(-1)
    weighted = precision * scaled
    constants = (sigma.log().sum(-1) + clean.shape[-1] * HALF_LOG_TWO_PI) * active
    columns = [
        -0.5 * precision.flatten(1),
        weighted.flatten(1),
        -(0.5 * (weighted * scaled).sum(-1) + constants),
    ]
    if with_own:
        columns.append(-active)
    right = torch.cat(columns, dim=1)
    return ComponentSide(right, scaled, precision, sigma, active, constants)


def query_gradients(
    side: QuerySide, grad_left: torch.Tensor, scale: Scaling
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Chain rule from ``dL`` ``(m, 2K + 2S)`` to the queries and their own-term inputs.

    Returns ``(d y, d c_own, d sigma_own)``; the last two are ``None`` without an own term
    (``d c_own`` is the gradient of both the clean embedding and the mean).
    """
    shape = side.scaled.shape
    k = shape[1] * shape[2]
    grad_square = grad_left[:, :k].reshape(shape)
    grad_linear = grad_left[:, k : 2 * k].reshape(shape)
    grad_y = (2.0 * side.scaled * grad_square + grad_linear) * scale.inverse_scale
    grad_y = grad_y * side.active.unsqueeze(-1)
    if side.own is None:
        return grad_y, None, None
    grad_q = (grad_left[:, 2 * k + shape[1] :] * side.active).unsqueeze(-1)
    residual, sigma = side.own.residual, side.own.stds
    # q = -sum_e (d^2 / 2 + log sigma), d = (y - c) / sigma.
    through_residual = grad_q * residual / sigma
    grad_y = grad_y - through_residual
    grad_sigma = grad_q * (residual.square() - 1.0) / sigma
    return grad_y, through_residual, grad_sigma


def component_gradients(
    side: ComponentSide, grad_right: torch.Tensor, scale: Scaling
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain rule from ``dR`` ``(n, 2K + 2S)`` to the centres ``c = x + mu`` and ``sigma``."""
    shape = side.scaled.shape
    k = shape[1] * shape[2]
    grad_half_precision = grad_right[:, :k].reshape(shape)  # of -w/2
    grad_weighted = grad_right[:, k : 2 * k].reshape(shape)  # of w c'
    grad_constant = grad_right[:, 2 * k : 2 * k + shape[1]].unsqueeze(-1)  # of -(... + b p)
    scaled, precision, sigma = side.scaled, side.precision, side.stds
    grad_centre = precision * scale.inverse_scale * (grad_weighted - grad_constant * scaled)
    grad_sigma = (precision / sigma) * (
        grad_half_precision - 2.0 * grad_weighted * scaled + grad_constant * scaled.square()
    ) - grad_constant * side.active.unsqueeze(-1) / sigma
    return grad_centre, grad_sigma
