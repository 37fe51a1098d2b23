"""Estimator-side steps around the pairwise kernel (:mod:`mi_losses.kernels`): samples per
granularity, checks of the values at active positions, and the estimate of each direction."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mi_losses import keys
from mi_losses._validation import (
    check_finite_at_active,
    check_positive_at_active,
    host_check,
)
from mi_losses.functional._mixture import query_mean
from mi_losses.kernels import Result
from mi_losses.types import Estimate, Granularity


def as_samples(tensor: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """``(n, S, ...)`` as samples: sequences as they are, or tokens ``(n*S, 1, ...)`` (a view)."""
    if granularity == "token":
        return tensor.reshape(tensor.shape[0] * tensor.shape[1], 1, *tensor.shape[2:])
    return tensor


@host_check
def check_active_values(
    tensors: dict[str, torch.Tensor],
    positive: tuple[str, ...],
    active: Callable[[], dict[str, torch.Tensor]],
) -> None:
    """Raise ``ValueError`` naming the first input with a bad value at an active position.

    ``tensors`` maps a name to a ``(rows, S, E)`` tensor; ``active()`` makes, for every name,
    the ``(rows, S)`` bool positions that are read; names in ``positive`` must be finite and
    ``> 0`` there, the others finite. The common case costs one pass per tensor (its minimum
    and maximum) and one host sync: when every value is good (the log of each positive
    tensor's minimum, and every other minimum and maximum, are finite) no position is looked
    at; else ``active()`` is called, once, and each input is checked at its active positions.
    """
    with torch.no_grad():
        bounds = []
        for name, t in tensors.items():
            if t.numel():
                low, high = torch.aminmax(t)
                bounds += [low.log() if name in positive else low, high]
        if not bounds or math.isfinite(torch.stack(bounds).sum(dtype=torch.float64).item()):
            return
    positions = active()
    for name, tensor in tensors.items():
        where = positions[name]
        if name in positive:
            check_positive_at_active(name, tensor, where)
        else:
            check_finite_at_active(name, tensor, where)


def active_positions(
    query_mask: torch.Tensor, component_mask: torch.Tensor, spans: list[tuple[int, int, int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions the masks declare active ``(rows, S)``: queries, and the components' tensors.

    These are the positions ``validate_args`` checks (a superset of those the kernel reads: a
    query position no component shares is active by its mask but takes part in no pair).
    """
    queries = torch.zeros_like(query_mask)
    components = torch.zeros_like(component_mask)
    for q0, q1, c0, c1 in spans:
        queries = _or_rows(queries, q0, query_mask[q0:q1])
        components = _or_rows(components, c0, component_mask[c0:c1])
    return queries, components


def _or_rows(target: torch.Tensor, start: int, rows: torch.Tensor) -> torch.Tensor:
    stop = start + rows.shape[0]
    return torch.cat([target[:start], target[start:stop] | rows, target[stop:]])


def direction_estimates(
    stream: Result, sizes: list[int], *, with_own: bool, with_components: bool
) -> list[Estimate]:
    """One :class:`Estimate` per direction from the kernel's per-query results.

    ``I_i = log |V_i| - logsumexp_{V_i} z_ij`` (the mixture entropy has no own term, then it is
    ``H_i``). Components, with ``w`` the softmax weights:
    ``mahalanobis = -sum w z - sum w q - sum w p``, ``log constants = sum w p + log |V_i| -
    Entropy(w)`` where ``Entropy(w) = logsumexp - sum w z``, ``std_log = sum w q``.
    """
    estimates, offset = [], 0
    for size in sizes:
        part = stream.queries(offset, offset + size)
        offset += size
        log_count = part.num_valid.log()
        # 0 where not valid (log 0 - logsumexp = -inf - -inf: NaN there, no gradient)
        per_query = (log_count - part.log_sum_exp).masked_fill_(part.num_valid == 0, 0.0)
        num_queries = torch.count_nonzero(part.num_valid)
        value = per_query.sum() / num_queries.clamp_min(1)
        components = {}
        if with_components:
            assert part.stats is not None
            valid = part.num_valid > 0
            score, own, constants = part.stats
            lse = torch.where(valid, part.log_sum_exp.detach(), 0.0)
            mahalanobis = -score - own - constants
            log_constants = constants + log_count - lse + score
            components = {
                keys.MAHALANOBIS: query_mean(mahalanobis, valid),
                keys.LOG_CONSTANTS: query_mean(log_constants, valid),
            }
            if with_own:
                components[keys.MIXTURE_ENTROPY] = (
                    components[keys.MAHALANOBIS] + components[keys.LOG_CONSTANTS]
                )
                components[keys.STD_LOG] = query_mean(own, valid)
                components[keys.MUTUAL_INFORMATION] = value.detach()
        estimates.append(Estimate(value, components, num_queries, per_query))
    return estimates
