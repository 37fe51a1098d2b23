"""Steps shared by the mixture estimators: samples per granularity, pair sums, log-mean-exp.

Every pairwise term of MATH.md other than the Mahalanobis distance is a sum over the pair active
set ``P(i, j)`` of a per-position quantity of the query or of the component,

    sum_s a_is b_js (u_is + v_js)  =  [a*u, a] . [b, b*v]^T,

one small matrix product (``(M, 2S) x (2S, N)``); its softmax-weighted sum over components,
``sum_j w_ij (...)``, is ``rowdot(a, u * (w . b) + w . (b v))`` and needs no ``(M, N)`` term at
all. Only the distance ``D`` and the mixture weights ``w`` are ``(M, N)`` tensors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mi_losses.functional.distance import pairwise_mahalanobis
from mi_losses.types import ComponentLossesDict, Estimate, Granularity

HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def as_samples(tensor: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """``(n, S, ...)`` as samples: sequences as they are, or tokens ``(n*S, 1, ...)``."""
    if granularity == "token":
        return tensor.reshape(-1, 1, *tensor.shape[2:])
    return tensor


class Pairs(NamedTuple):
    """Queries ``(M, S, E)`` against components ``(N, S, E)``: what every estimator needs.

    Attributes:
        query_mask: ``a``, ``(M, S)`` 0/1 in the compute dtype.
        component_mask: ``b``, ``(N, S)`` 0/1.
        valid: ``(M, N)`` bool, ``|P(i, j)| > 0``.
        mahalanobis: ``D``, ``(M, N)``, ``0.5 * sum_P ((y_i - c_j) / sigma_j)^2``.
        component_constants: ``(N, S)``, ``sum_e log sigma_js + E/2 log 2 pi``: summed over
            ``P(i, j)`` it gives the log-normaliser of component ``j``.
    """

    query_mask: torch.Tensor
    component_mask: torch.Tensor
    valid: torch.Tensor
    mahalanobis: torch.Tensor
    component_constants: torch.Tensor

    def pair_sum(
        self, query_term: torch.Tensor | None, component_term: torch.Tensor | None
    ) -> torch.Tensor:
        """``sum_{s in P(i, j)} (u_is + v_js)`` as an ``(M, N)`` tensor; ``None`` means zero."""
        a, b = self.query_mask, self.component_mask
        left, right = [], []
        if query_term is not None:
            left.append(a * query_term)
            right.append(b)
        if component_term is not None:
            left.append(a)
            right.append(b * component_term)
        return torch.cat(left, dim=1) @ torch.cat(right, dim=1).T

    def weighted_pair_sum(
        self,
        weights: torch.Tensor,
        query_term: torch.Tensor | None,
        component_term: torch.Tensor | None,
    ) -> torch.Tensor:
        """``sum_j w_ij sum_{s in P(i, j)} (u_is + v_js)`` per query, without ``(M, N)`` terms."""
        a, b = self.query_mask, self.component_mask
        total = torch.zeros_like(a)
        if query_term is not None:
            total = total + query_term * (weights @ b)
        if component_term is not None:
            total = total + weights @ (b * component_term)
        return (a * total).sum(-1)


def pairs(
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    centres: torch.Tensor,
    stds: torch.Tensor,
    component_mask: torch.Tensor,
) -> Pairs:
    """:class:`Pairs` of queries ``(M, S, E)`` and components; masks bool ``(M, S)``, ``(N, S)``."""
    dtype = queries.dtype
    a, b = query_mask.to(dtype), component_mask.to(dtype)
    return Pairs(
        query_mask=a,
        component_mask=b,
        valid=(a @ b.T) > 0,
        mahalanobis=pairwise_mahalanobis(queries, centres, stds, a, b),
        component_constants=stds.log().sum(-1) + queries.shape[-1] * HALF_LOG_TWO_PI,
    )


class LogMeanExp(NamedTuple):
    """``-log mean_{j in V_i} exp(z_ij)`` per query, and what its components need.

    Attributes:
        value: ``(M,)``, with gradient; ``0`` for queries without valid components.
        query_valid: ``(M,)`` bool, ``V_i`` non-empty.
        weights: ``(M, N)`` softmax of ``z`` over ``V_i`` (``0`` elsewhere), detached.
        log_num_valid: ``(M,)`` ``log |V_i|`` (``0`` where empty).
        weight_entropy: ``(M,)`` entropy of the weights (``0`` where empty).
    """

    value: torch.Tensor
    query_valid: torch.Tensor
    weights: torch.Tensor
    log_num_valid: torch.Tensor
    weight_entropy: torch.Tensor


def negative_log_mean_exp(z: torch.Tensor, valid: torch.Tensor) -> LogMeanExp:
    """Masked ``-log mean exp`` over the last axis: a ``logsumexp`` over the valid pairs only.

    Invalid pairs are excluded (set to ``-inf``) before the reduction; a row without any valid
    pair gets the value ``0`` and a zero gradient, never NaN.
    """
    value, weights, weight_entropy, log_num_valid = _NegativeLogMeanExp.apply(z, valid)
    return LogMeanExp(value, valid.any(-1), weights, log_num_valid, weight_entropy)


class _NegativeLogMeanExp(torch.autograd.Function):
    """``log |V_i| - logsumexp_{V_i} z_i`` with the softmax weights computed once.

    The weights are the gradient (``d value_i / d z_ij = -w_ij``) and the mixture weights of the
    components, so they are normalised by their own sum (accurate even when ``|z|`` is large)
    and saved for the backward pass instead of exponentiating again.
    """

    @staticmethod
    def forward(ctx, z, valid):
        query_valid = valid.any(-1)
        shifted = z.masked_fill(~valid, -math.inf)
        peak = shifted.amax(-1, keepdim=True).masked_fill_(~query_valid.unsqueeze(-1), 0.0)
        shifted.sub_(peak)
        weights = shifted.exp()
        total = weights.sum(-1)
        weights.div_(total.clamp_min(torch.finfo(z.dtype).tiny).unsqueeze(-1))
        log_total = total.log().masked_fill_(~query_valid, 0.0)
        log_num_valid = valid.sum(-1).clamp_min(1).to(z.dtype).log()
        value = (log_num_valid - peak.squeeze(-1) - log_total).masked_fill_(~query_valid, 0.0)
        # Entropy(w) = -sum_j w_ij log w_ij, with log w_ij = shifted_ij - log_total_i.
        shifted.masked_fill_(~valid, 0.0)
        weight_entropy = log_total - torch.linalg.vecdot(weights, shifted)
        ctx.save_for_backward(weights)
        ctx.mark_non_differentiable(weights, weight_entropy, log_num_valid)
        return value, weights, weight_entropy, log_num_valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_value, *_):
        (weights,) = ctx.saved_tensors
        return weights * grad_value.neg().unsqueeze(-1), None


def query_mean(per_query: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid queries; ``0`` (keeping the graph) when none is valid."""
    total = torch.where(query_valid, per_query, 0.0).sum()
    return total / query_valid.sum().clamp_min(1).to(per_query.dtype)


def mixture_components(pairs_: Pairs, lme: LogMeanExp) -> tuple[torch.Tensor, torch.Tensor]:
    """Mahalanobis and log-constants-and-determinant components of a mixture entropy (detached).

    ``mean_i sum_j w_ij D_ij`` and
    ``mean_i [sum_j w_ij (sum_P log sigma_j + |P|/2 log 2 pi) + log |V_i| - Entropy(w_i)]``.
    """
    with torch.no_grad():
        weights = lme.weights
        mahalanobis = torch.linalg.vecdot(weights, pairs_.mahalanobis)
        constants = pairs_.weighted_pair_sum(weights, None, pairs_.component_constants)
        log_constants = constants + lme.log_num_valid - lme.weight_entropy
        return (
            query_mean(mahalanobis, lme.query_valid),
            query_mean(log_constants, lme.query_valid),
        )


def average_estimates(estimates: list[Estimate]) -> Estimate:
    """Average of estimates (value and every component) over those with a valid query."""
    has_queries = [(e.num_queries > 0).to(e.value.dtype) for e in estimates]
    denominator = torch.stack(has_queries).sum().clamp_min(1.0)

    def mean(values: list[torch.Tensor]) -> torch.Tensor:
        return sum(w * v for w, v in zip(has_queries, values, strict=True)) / denominator

    components = {
        key: mean([e.components[key] for e in estimates]).detach()
        for key in estimates[0].components
    }
    num_queries = torch.stack([e.num_queries for e in estimates]).sum()
    per_query = [e.per_query for e in estimates]
    return Estimate(
        mean([e.value for e in estimates]),
        components,
        num_queries,
        None if any(p is None for p in per_query) else torch.cat(per_query),  # type: ignore[arg-type]
    )


def to_result(estimate: Estimate, dtype: torch.dtype) -> Estimate:
    """The estimate with its value and components in ``dtype``."""
    return Estimate(
        estimate.value.to(dtype),
        {key: value.to(dtype) for key, value in estimate.components.items()},
        estimate.num_queries,
        None if estimate.per_query is None else estimate.per_query.to(dtype),
    )


def value_with_losses(estimate: Estimate, losses: ComponentLossesDict | None) -> torch.Tensor:
    """The estimate's value, after adding its components to ``losses`` when it is given."""
    if losses is not None:
        losses.update(estimate.components)
    return estimate.value
