"""Forward and backward passes of the streaming kernel, block by block (see ``_streaming``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from mi_losses.functional._accumulators import Accumulator, is_wrapped, put
from mi_losses.functional._accuracy import corrected, direct_gradients, excess
from mi_losses.functional._pair_terms import (
    ComponentProducts,
    ComponentSide,
    OwnTerm,
    QuerySide,
    Scaling,
    add_products,
    component_gradients,
    component_products,
    component_side,
    component_stds,
    query_gradients,
    query_side,
    scaling,
    scores,
)


def effective_masks(
    query_mask: torch.Tensor, component_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions that take part in at least one valid pair: the others are never read."""
    return (
        query_mask & component_mask.any(0, keepdim=True),
        component_mask & query_mask.any(0, keepdim=True),
    )


class Spec(NamedTuple):
    """What the passes need to know besides the tensors (Python values only)."""

    directions: tuple[tuple[int, int, int, int], ...]
    with_own: bool
    max_block_bytes: int
    direct: bool = False  # evaluate the pairs the rounding check flags from their differences


def _ranges(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _blocks(
    m: int, n: int, k: int, itemsize: int, budget: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Row ranges of queries and of components: half the budget for the component factors
    (four ``K``-wide tensors per row), half for the query factors and the block's scores."""
    n_block = max(1, min(n, budget // 2 // max(4 * k * itemsize, 1)))
    m_block = max(1, min(m, budget // 2 // max((4 * k + 6 * n_block) * itemsize, 1)))
    return _ranges(m, m_block), _ranges(n, n_block)


# Rows per block when every factor is kept: K-wide tensors of at most this many bytes stay in
# the allocator's reusable memory (larger ones are mapped afresh on every allocation on CPU).
FACTOR_BLOCK_BYTES = 8 * 2**20


def _factor_blocks(
    m: int, n: int, k: int, itemsize: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    rows = max(1, FACTOR_BLOCK_BYTES // max(k * itemsize, 1))
    return _ranges(m, min(max(m, 1), rows)), _ranges(n, min(max(n, 1), rows))


def storage(inputs: tuple[torch.Tensor, ...], spec: Spec, dtype: torch.dtype) -> str:
    """What the forward pass keeps for the backward pass, within the budget.

    ``"factors"``: every block's factors and scores, so a first-order backward pass prepares
    nothing again; ``"scores"``: the scores of every block (two matrix
    products fewer); ``"none"``: the backward pass recomputes each block.
    """
    s, e = inputs[0].shape[1], inputs[0].shape[2]
    k, itemsize = s * e, torch.finfo(dtype).bits // 8
    pairs = factors = 0
    for q0, q1, c0, c1 in spec.directions:
        m, n = q1 - q0, c1 - c0
        pairs += m * n
        factors += m * (2 * k + 4 * s) + n * (3 * k + 4 * s) + m * n + 2 * k
    if factors * itemsize <= spec.max_block_bytes:
        return "factors"
    if pairs * itemsize <= spec.max_block_bytes // 2:
        return "scores"
    return "none"


class _Direction(NamedTuple):
    """One direction's inputs, restricted to its rows and effective masks."""

    queries: torch.Tensor
    query_mask: torch.Tensor
    own: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    clean: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    component_mask: torch.Tensor
    scale: Scaling

    def queries_block(self, rows: tuple[int, int], dtype: torch.dtype) -> QuerySide:
        start, stop = rows
        own = None
        if self.own is not None:
            clean, means, stds = self.own
            own = (clean[start:stop], means[start:stop], stds[start:stop])
        mask = self.query_mask[start:stop]
        return query_side(self.queries[start:stop], mask, own, self.scale, dtype)

    def components_block(self, rows: tuple[int, int], dtype: torch.dtype) -> ComponentSide:
        start, stop = rows
        return component_side(
            self.clean[start:stop],
            self.means[start:stop],
            self.stds[start:stop],
            self.component_mask[start:stop],
            self.scale,
            dtype,
            self.own is not None,
        )


def _direction(
    inputs: tuple[torch.Tensor, ...],
    span: tuple[int, int, int, int],
    with_own: bool,
    dtype: torch.dtype,
    scale: Scaling | None = None,
) -> _Direction:
    queries, clean, means, stds, query_mask, component_mask = inputs
    q0, q1, c0, c1 = span
    a, b = effective_masks(query_mask[q0:q1], component_mask[c0:c1])
    own = (clean[q0:q1], means[q0:q1], stds[q0:q1]) if with_own else None
    if scale is None:
        scale = scaling(clean[c0:c1], means[c0:c1], stds[c0:c1], b, dtype)
    return _Direction(queries[q0:q1], a, own, clean[c0:c1], means[c0:c1], stds[c0:c1], b, scale)


def _pack_query(query: QuerySide) -> list[torch.Tensor]:
    """What the backward pass needs of a query block (``y'^2`` and the stds are recomputed)."""
    own = [query.own.residual, query.own.value] if query.own is not None else []
    return [query.scaled, query.extra, query.active, *own]


def _pack_component(comp: ComponentSide) -> list[torch.Tensor]:
    """What the backward pass needs of a component block (the stds are recomputed)."""
    return [comp.precision, comp.weighted, comp.extra, comp.scaled, comp.active, comp.constants]


def _unpack_query(
    packed: list[torch.Tensor], d: _Direction, rows: tuple[int, int], dtype: torch.dtype
) -> QuerySide:
    """Inverse of :func:`_pack_query` for rows ``[start, stop)`` of direction ``d``."""
    scaled, extra, active, *own_parts = packed
    own = None
    if d.own is not None:
        residual, value = own_parts
        mask = d.query_mask[rows[0] : rows[1]].unsqueeze(-1)
        sigma = torch.where(mask, d.own[2][rows[0] : rows[1]].to(dtype), 1.0)
        own = OwnTerm(residual, sigma, value)
    return QuerySide(scaled.square(), scaled, extra, active, own)


def _unpack_component(
    packed: list[torch.Tensor], d: _Direction, rows: tuple[int, int], dtype: torch.dtype
) -> ComponentSide:
    """Inverse of :func:`_pack_component` for rows ``[start, stop)`` of direction ``d``."""
    precision, weighted, extra, scaled, active, constants = packed
    mask = d.component_mask[rows[0] : rows[1]]
    sigma = component_stds(d.stds[rows[0] : rows[1]], mask, d.scale, dtype)
    return ComponentSide(precision, weighted, extra, scaled, sigma, active, constants)


def _plan(d: _Direction, keep: str, budget: int, dtype: torch.dtype) -> tuple[list[Any], list[Any]]:
    m, n = d.queries.shape[0], d.clean.shape[0]
    k, itemsize = d.queries.shape[1] * d.queries.shape[2], torch.finfo(dtype).bits // 8
    if keep == "factors":
        return _factor_blocks(m, n, k, itemsize)
    return _blocks(m, n, k, itemsize, budget)


def forward_pass(
    inputs: tuple[torch.Tensor, ...], spec: Spec, dtype: torch.dtype, check: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Per-query ``logsumexp`` ``(Q,)``, statistics ``(4, Q)``, the largest excess error, and
    what the backward pass may reuse (see :func:`storage`).

    Statistics: ``sum_j w z``, ``sum_j w sum_P q``, ``sum_j w sum_P p`` and ``|V_i|``.
    """
    keep = storage(inputs, spec, dtype)
    kept: list[torch.Tensor] = []
    log_sum_exps, all_stats = [], []
    largest = inputs[0].new_zeros((), dtype=dtype)
    for span in spec.directions:
        d = _direction(inputs, span, spec.with_own, dtype)
        query_blocks, component_blocks = _plan(d, keep, spec.max_block_bytes, dtype)
        queries: list[QuerySide] = []
        comps: list[ComponentSide] = []
        if keep == "factors":  # each block prepared once, kept for the backward pass
            queries = [d.queries_block(rows, dtype) for rows in query_blocks]
            comps = [d.components_block(rows, dtype) for rows in component_blocks]
            kept += [*d.scale, *(t for q in queries for t in _pack_query(q))]
            kept += [t for c in comps for t in _pack_component(c)]
        a = d.query_mask.to(dtype)
        m = a.shape[0]
        peak = torch.full((m,), -math.inf, dtype=dtype, device=a.device)
        total, score, count = a.new_zeros(m), a.new_zeros(m), a.new_zeros(m)
        weighted_mask, weighted_constants = a.new_zeros(a.shape), a.new_zeros(a.shape)
        own_values: list[torch.Tensor] = []
        for ci, c_rows in enumerate(component_blocks):
            comp = comps[ci] if comps else d.components_block(c_rows, dtype)
            for qi, q_rows in enumerate(query_blocks):
                rows = slice(*q_rows)
                query = queries[qi] if queries else d.queries_block(q_rows, dtype)
                if query.own is not None and c_rows[0] == 0:
                    own_values.append(query.own.value)
                valid = (query.active @ comp.active.T) > 0
                z = torch.where(valid, scores(query, comp), -math.inf)
                if check or spec.direct:
                    error = excess(query, comp, z, valid, dtype)
                    if check:
                        largest = torch.maximum(largest, error.amax() if error.numel() else largest)
                    if spec.direct:
                        z = corrected(d, q_rows, c_rows, query, comp, z, error, dtype)
                if keep != "none":
                    kept.append(z)
                old = peak[rows]
                new = torch.maximum(old, z.amax(-1))
                shift = torch.where(torch.isfinite(new), new, 0.0)
                e = (z - shift.unsqueeze(-1)).exp()
                alpha = (old - shift).exp().unsqueeze(-1)
                peak = put(peak, rows, new)
                total = put(total, rows, total[rows] * alpha[:, 0] + e.sum(-1))
                weighted_z = (e * torch.where(valid, z, 0.0)).sum(-1)
                score = put(score, rows, score[rows] * alpha[:, 0] + weighted_z)
                count = put(count, rows, count[rows] + valid.to(dtype).sum(-1))
                weighted_mask = put(
                    weighted_mask, rows, weighted_mask[rows] * alpha + e @ comp.active
                )
                weighted_constants = put(
                    weighted_constants, rows, weighted_constants[rows] * alpha + e @ comp.constants
                )
        has = count > 0
        total = torch.where(has, total, 1.0)
        shift = torch.where(torch.isfinite(peak), peak, 0.0)
        log_sum_exps.append(torch.where(has, shift + total.log(), -math.inf))
        own = a.new_zeros(m)
        if own_values:
            own = (torch.cat(own_values) * weighted_mask).sum(-1)
        constants = (weighted_constants * a).sum(-1)
        all_stats.append(torch.stack([score / total, own / total, constants / total, count]))
    return torch.cat(log_sum_exps), torch.cat(all_stats, dim=1), largest, kept


def backward_pass(
    inputs: tuple[torch.Tensor, ...],
    log_sum_exp: torch.Tensor,
    grad: torch.Tensor,
    spec: Spec,
    needs_components: bool,
    cache: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``sum_i grad_i logsumexp_i`` w.r.t. queries, centres and stds.

    Takes each block's factors and scores from ``cache`` (what :func:`forward_pass` kept) or
    recomputes them, then the softmax weights ``exp(z_ij - logsumexp_i)``; built from
    differentiable operations only. The centre gradient is that of the clean embeddings and of
    the means alike.
    """
    dtype = log_sum_exp.dtype
    queries_, clean, _, stds, _, _ = inputs
    keep = storage(inputs, spec, dtype) if cache else "none"
    functional = torch.is_grad_enabled() or torch.compiler.is_compiling() or is_wrapped(grad)
    grad_queries = Accumulator(queries_, dtype, functional)
    grad_centres = Accumulator(clean, dtype, functional)
    grad_stds = Accumulator(stds, dtype, functional)
    rest = iter(cache or [])
    offset = 0
    query_parts = 5 if spec.with_own else 3
    for span in spec.directions:
        q0, _, c0, _ = span
        scale = Scaling(next(rest), next(rest)) if keep == "factors" else None
        d = _direction(inputs, span, spec.with_own, dtype, scale)
        query_blocks, component_blocks = _plan(d, keep, spec.max_block_bytes, dtype)
        queries: list[QuerySide] = []
        comps: list[ComponentSide] = []
        if keep == "factors":
            queries = [
                _unpack_query([next(rest) for _ in range(query_parts)], d, rows, dtype)
                for rows in query_blocks
            ]
            comps = [
                _unpack_component([next(rest) for _ in range(6)], d, rows, dtype)
                for rows in component_blocks
            ]
        m = d.queries.shape[0]
        lse = log_sum_exp[offset : offset + m]
        g = torch.where(torch.isfinite(lse), grad[offset : offset + m], 0.0)
        lse = torch.where(torch.isfinite(lse), lse, 0.0)
        offset += m
        for ci, c_rows in enumerate(component_blocks):
            comp = comps[ci] if comps else d.components_block(c_rows, dtype)
            products: ComponentProducts | None = None
            for qi, q_rows in enumerate(query_blocks):
                query = queries[qi] if queries else d.queries_block(q_rows, dtype)
                z, flagged = _scores(d, q_rows, c_rows, query, comp, spec.direct, dtype, rest, keep)
                valid = torch.isfinite(z)
                log_w = torch.where(valid, z - lse[q_rows[0] : q_rows[1]].unsqueeze(-1), -math.inf)
                weights = log_w.exp() * g[q_rows[0] : q_rows[1]].unsqueeze(-1)
                distance_weights = None
                if flagged is not None:  # their distance derivatives from the differences
                    distance_weights = torch.where(flagged, 0.0, weights)
                    direct = direct_gradients(d, q_rows, c_rows, flagged, weights, dtype)
                    if needs_components:
                        grad_centres.add(c0 + c_rows[0], direct.centres)
                        grad_stds.add(c0 + c_rows[0], direct.stds)
                if needs_components:
                    update = component_products(weights, query, distance_weights)
                    products = add_products(products, update)
                grad_y, grad_c, grad_s = query_gradients(
                    query, weights, comp, d.scale, distance_weights
                )
                if flagged is not None:
                    grad_y = grad_y + direct.queries
                grad_queries.add(q0 + q_rows[0], grad_y)
                if grad_c is not None and grad_s is not None:
                    grad_centres.add(q0 + q_rows[0], grad_c)
                    grad_stds.add(q0 + q_rows[0], grad_s)
            if products is not None:
                grad_c, grad_s = component_gradients(comp, products, d.scale)
                grad_centres.add(c0 + c_rows[0], grad_c)
                grad_stds.add(c0 + c_rows[0], grad_s)
    return grad_queries.result(), grad_centres.result(), grad_stds.result()


def _scores(
    d: _Direction,
    q_rows: tuple[int, int],
    c_rows: tuple[int, int],
    query: QuerySide,
    comp: ComponentSide,
    direct: bool,
    dtype: torch.dtype,
    kept: Iterator[torch.Tensor],
    keep: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A block's scores as the forward pass computed them (``-inf`` for invalid pairs): kept
    or recomputed; with ``direct``, also the pairs the rounding check flags."""
    if keep != "none" and not direct:
        return next(kept), None
    valid = (query.active @ comp.active.T) > 0
    z = torch.where(valid, scores(query, comp), -math.inf)
    if not direct:
        return z, None
    error = excess(query, comp, z, valid, dtype)
    if keep != "none":
        return next(kept), error > 0
    return corrected(d, q_rows, c_rows, query, comp, z, error, dtype), error > 0
