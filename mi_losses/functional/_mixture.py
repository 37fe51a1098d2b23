"""Steps shared by the mixture estimators: samples per granularity, pair terms, log-mean-exp."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mi_losses.functional.distance import pairwise_mahalanobis
from mi_losses.types import Estimate, Granularity

HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)
GRANULARITIES = ("sequence", "token")


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def as_samples(
    tensor: torch.Tensor, mask: torch.Tensor, granularity: Granularity
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, S, E)`` and ``(n, S)`` as samples: sequences as they are, or tokens ``(n*S, 1, E)``."""
    if granularity == "token":
        return tensor.reshape(-1, 1, tensor.shape[-1]), mask.reshape(-1, 1)
    return tensor, mask


class PairTerms(NamedTuple):
    """``(M, N)`` sums over the pair active sets ``P(i, j)`` of MATH.md.

    Attributes:
        valid: ``|P(i, j)| > 0``.
        count: ``|P(i, j)|``, the number of active scalar elements ``(s, e)``.
        mahalanobis: ``0.5 * sum_P ((y_i - c_j) / sigma_j)^2``.
        log_det: ``sum_P log sigma_j``.
    """

    valid: torch.Tensor
    count: torch.Tensor
    mahalanobis: torch.Tensor
    log_det: torch.Tensor


def pair_terms(
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    centres: torch.Tensor,
    stds: torch.Tensor,
    component_mask: torch.Tensor,
) -> PairTerms:
    """Pair terms of queries ``(M, S, E)`` against components ``(N, S, E)``; float 0/1 masks."""
    positions = query_mask @ component_mask.T
    log_det = query_mask @ (component_mask * stds.log().sum(-1)).T
    mahalanobis = pairwise_mahalanobis(queries, centres, stds, query_mask, component_mask)
    return PairTerms(
        valid=positions > 0,
        count=positions * queries.shape[-1],
        mahalanobis=mahalanobis,
        log_det=log_det,
    )


def masked_sum(per_position: torch.Tensor, query_mask: torch.Tensor, component_mask: torch.Tensor):
    """``sum_{s in P(i, j)} v_is`` for a per-query, per-position ``v`` ``(M, S)``: an ``(M, N)``."""
    return (query_mask * per_position) @ component_mask.T


class LogMeanExp(NamedTuple):
    """``-log mean_{j in V_i} exp(z_ij)`` per query, and what its components need.

    Attributes:
        value: ``(M,)``, with gradient; ``0`` for queries without valid components.
        query_valid: ``(M,)`` bool, ``V_i`` non-empty.
        weights: ``(M, N)`` softmax of ``z`` over ``V_i`` (``0`` elsewhere), detached.
        log_num_valid: ``(M,)`` ``log |V_i|`` (``0`` where empty), detached.
        weight_entropy: ``(M,)`` entropy of the weights, detached.
    """

    value: torch.Tensor
    query_valid: torch.Tensor
    weights: torch.Tensor
    log_num_valid: torch.Tensor
    weight_entropy: torch.Tensor


def negative_log_mean_exp(z: torch.Tensor, valid: torch.Tensor) -> LogMeanExp:
    """Masked ``-log mean exp`` over the last axis: a ``logsumexp`` over the valid pairs only.

    Invalid pairs are excluded before the ``logsumexp``; a row without any valid pair is filled
    with zeros (not ``-inf``) so that its value and gradient stay finite, and is then zeroed.
    """
    query_valid = valid.any(-1)
    fill = torch.where(query_valid, -math.inf, 0.0).to(z.dtype).unsqueeze(-1)
    masked = torch.where(valid, z, fill)
    log_sum = torch.logsumexp(masked, dim=-1)
    num_valid = valid.sum(-1)
    log_num_valid = num_valid.clamp_min(1).to(z.dtype).log()
    value = torch.where(query_valid, log_num_valid - log_sum, 0.0)
    with torch.no_grad():
        # Normalised by their own sum (softmax), not by exp(-log_sum): the weights then sum to one
        # to rounding, which keeps sum_j w_ij t_ij accurate when |z| is large.
        log_weights = torch.log_softmax(masked, dim=-1)
        weights = torch.where(valid, log_weights.exp(), 0.0)
        weight_entropy = -torch.where(valid, weights * log_weights, 0.0).sum(-1)
    return LogMeanExp(value, query_valid, weights, log_num_valid.detach(), weight_entropy)


def query_mean(per_query: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid queries; ``0`` (keeping the graph) when none is valid."""
    total = torch.where(query_valid, per_query, 0.0).sum()
    return total / query_valid.sum().clamp_min(1).to(per_query.dtype)


def weighted(weights: torch.Tensor, pairwise: torch.Tensor) -> torch.Tensor:
    """``sum_j w_ij * t_ij`` per query (``w`` is zero outside ``V_i``)."""
    return (weights * pairwise).sum(-1)


def mixture_components(terms: PairTerms, lme: LogMeanExp) -> tuple[torch.Tensor, torch.Tensor]:
    """Mahalanobis and log-constants-and-determinant components of a mixture entropy (detached)."""
    with torch.no_grad():
        mahalanobis = query_mean(weighted(lme.weights, terms.mahalanobis), lme.query_valid)
        constants = terms.log_det + terms.count * HALF_LOG_TWO_PI
        log_constants = query_mean(
            weighted(lme.weights, constants) + lme.log_num_valid - lme.weight_entropy,
            lme.query_valid,
        )
    return mahalanobis.detach(), log_constants.detach()


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
    return Estimate(mean([e.value for e in estimates]), components, num_queries)


def to_result(estimate: Estimate, dtype: torch.dtype) -> Estimate:
    """The estimate with its value and components in ``dtype``."""
    return Estimate(
        estimate.value.to(dtype),
        {key: value.to(dtype) for key, value in estimate.components.items()},
        estimate.num_queries,
    )
