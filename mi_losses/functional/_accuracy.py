"""The rounding check of the expanded pair scores and the direct evaluation of flagged pairs."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from mi_losses.functional._pair_terms import ComponentSide, QuerySide

# Rounding the expanded square costs about ``eps * magnitude`` nats in a pair's distance
# (``magnitude`` the sum of the positive expanded terms). Where that exceeds this relative plus
# absolute tolerance (per compute dtype) for a valid pair, a float32 evaluation is redone in
# float64, and a float64 one evaluates the flagged pairs from their differences.
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-8)}


class Summary(NamedTuple):
    """What the rounding check and the pair constants need of a block of pairs."""

    query_squares: torch.Tensor | None  # sum_k y'^2, (m,); None: no rounding check
    query_active: torch.Tensor  # a, (m, S)
    own_value: torch.Tensor | None  # q, (m, S)
    component_largest: torch.Tensor | None  # max_k w, (n,); None: no rounding check
    half_squares: torch.Tensor  # 0.5 sum_e w c'^2, (n, S)
    component_active: torch.Tensor  # b, (n, S)
    component_constants: torch.Tensor  # b p, (n, S)


def summary(query: QuerySide, comp: ComponentSide, rounding: bool) -> Summary:
    """:class:`Summary` of the pairs of a query block and a component block (the two
    reductions over ``K`` only the rounding check needs are made with ``rounding``)."""
    n, s = comp.precision.shape[0], query.active.shape[1]
    squares = largest = None
    if rounding:
        squares = query.square.flatten(1).sum(-1)
        largest = (
            comp.precision.flatten(1).amax(-1)
            if comp.precision.numel()
            else comp.precision.new_zeros(n)
        )
    return Summary(
        squares,
        query.active,
        None if query.own is None else query.own.value,
        largest,
        -comp.extra[:, :s] - comp.constants,
        comp.active,
        comp.constants,
    )


def concatenate(parts: list[Summary]) -> Summary:
    """The :class:`Summary` of the same pairs over consecutive ranges of positions."""
    first = parts[0]
    if len(parts) == 1:
        return first

    def positions(name: str) -> torch.Tensor:
        return torch.cat([getattr(part, name) for part in parts], dim=1)

    def stacked(name: str) -> torch.Tensor:
        return torch.stack([getattr(part, name) for part in parts])

    rounding = first.query_squares is not None
    return Summary(
        stacked("query_squares").sum(0) if rounding else None,
        positions("query_active"),
        None if first.own_value is None else positions("own_value"),
        stacked("component_largest").amax(0) if rounding else None,
        positions("half_squares"),
        positions("component_active"),
        positions("component_constants"),
    )


def excess(
    facts: Summary, z: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Largest rounding error of the expanded distance beyond the tolerance, over valid pairs.

    The magnitude ``0.5 (sum_k y'^2 w + sum_k w c'^2)`` is bounded by
    ``0.5 (|y'|^2 max_k w + sum_k w c'^2)``; NaN (overflow of the expansion) counts as ``inf``.
    """
    assert facts.query_squares is not None and facts.component_largest is not None
    magnitude = (
        0.5 * facts.query_squares.unsqueeze(-1) * facts.component_largest
        + facts.query_active @ facts.half_squares.T
    )
    distance = -(z + pair_constants(facts))
    eps = torch.finfo(dtype).eps
    relative, absolute = TOLERANCES[dtype]
    error = eps * magnitude - relative * distance.abs() - absolute
    return torch.where(valid, torch.nan_to_num(error.detach(), nan=math.inf), -math.inf)


def pair_constants(facts: Summary) -> torch.Tensor:
    """``sum_{s in P(i,j)} (p_js + q_is)`` per pair: the score is ``-(D + this)``."""
    constants = facts.query_active @ facts.component_constants.T
    if facts.own_value is not None:
        constants = constants + facts.own_value @ facts.component_active.T
    return constants


def corrected(
    d: Any,
    q_rows: tuple[int, int],
    c_rows: tuple[int, int],
    facts: Summary,
    z: torch.Tensor,
    error: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``z`` with the flagged pairs' distances evaluated from the differences themselves.

    ``d`` is the direction (queries, clean, means, stds and their effective masks). The
    flagged values are replaced; derivatives still follow the expanded (analytically
    identical) expression.
    """
    flagged = error > 0
    if not bool(flagged.any()):
        return z
    rows, cols = flagged.nonzero(as_tuple=True)
    qi, cj = rows + q_rows[0], cols + c_rows[0]
    with torch.no_grad():
        active = (d.query_mask[qi] & d.component_mask[cj]).unsqueeze(-1)
        queries = torch.where(active, d.queries[qi].to(dtype), 0.0)
        # (y - x) - mu, not y - (x + mu): x + mu rounds mu away far from the origin.
        clean = torch.where(active, d.clean[cj].to(dtype), 0.0)
        means = torch.where(active, d.means[cj].to(dtype), 0.0)
        difference = (queries - clean) - means
        sigma = torch.where(active, d.stds[cj].to(dtype), 1.0)
        distance = 0.5 * (difference / sigma).square().sum((-1, -2))
        exact = -(distance + pair_constants(facts)[rows, cols])
        exact = z.detach().index_put((rows, cols), exact)
    # ``z - z.detach()`` is exactly 0 and carries the derivatives of the expanded expression.
    return torch.where(flagged, exact + (z - z.detach()), z)


class DirectGradients(NamedTuple):
    """Gradients of ``sum w_ij z_ij`` over flagged pairs through their distances, per block."""

    queries: torch.Tensor  # (m, S, E)
    centres: torch.Tensor  # (n, S, E)
    stds: torch.Tensor  # (n, S, E)


def direct_gradients(
    d: Any,
    q_rows: tuple[int, int],
    c_rows: tuple[int, int],
    flagged: torch.Tensor,
    weights: torch.Tensor,
    dtype: torch.dtype,
) -> DirectGradients:
    """The distance part of the gradient of the ``flagged`` pairs, from their differences.

    ``z_ij = -(D_ij + ...)`` with ``D_ij = 0.5 sum ((y_i - c_j) / sigma_j)^2``: the expanded
    derivatives cancel catastrophically exactly where the rounding check flags a pair, so these
    pairs' distance derivatives are evaluated directly (differentiable operations).
    """
    rows, cols = flagged.nonzero(as_tuple=True)
    qi, cj = rows + q_rows[0], cols + c_rows[0]
    active = (d.query_mask[qi] & d.component_mask[cj]).unsqueeze(-1)
    queries = torch.where(active, d.queries[qi].to(dtype), 0.0)
    clean = torch.where(active, d.clean[cj].to(dtype), 0.0)
    means = torch.where(active, d.means[cj].to(dtype), 0.0)
    sigma = torch.where(active, d.stds[cj].to(dtype), 1.0)
    difference = (queries - clean) - means
    weight = weights[rows, cols].reshape(-1, 1, 1)
    through = weight * difference / sigma.square()  # -dz/dy = dz/dc
    along_sigma = through * difference / sigma  # dz/dsigma
    m, n = q_rows[1] - q_rows[0], c_rows[1] - c_rows[0]
    shape = difference.shape[1:]
    zeros_m = difference.new_zeros((m, *shape))
    zeros_n = difference.new_zeros((n, *shape))
    return DirectGradients(
        zeros_m.index_add(0, rows, -through),
        zeros_n.index_add(0, cols, through),
        zeros_n.index_add(0, cols, along_sigma),
    )
