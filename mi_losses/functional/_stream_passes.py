"""Forward and backward passes of the streaming kernel, block by block (see ``_streaming``)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from mi_losses.functional._pair_terms import (
    ComponentSide,
    QuerySide,
    Scaling,
    component_gradients,
    component_side,
    query_gradients,
    query_side,
    scaling,
)

# Rounding the expanded square costs about ``eps * magnitude`` nats in a pair's distance
# (``magnitude`` the sum of the positive expanded terms). Where that exceeds this relative plus
# absolute tolerance (per compute dtype) for a valid pair, a float32 evaluation is redone in
# float64, and a float64 one evaluates the flagged pairs from their differences.
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-8)}


def effective_masks(
    query_mask: torch.Tensor, component_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions that take part in at least one valid pair: the others are never read."""
    return (
        query_mask & component_mask.any(0, keepdim=True),
        component_mask & query_mask.any(0, keepdim=True),
    )


def _block_rows(total: int, row_bytes: int, budget: int) -> int:
    return max(1, min(total, budget // max(row_bytes, 1)))


def _block_sizes(m: int, n: int, width: int, itemsize: int, budget: int) -> tuple[int, int]:
    """Components per block (half the budget for ``R``), then queries (``L`` plus scores)."""
    n_block = _block_rows(n, 2 * width * itemsize, budget // 2)
    m_block = _block_rows(m, (2 * width + 6 * n_block) * itemsize, budget // 2)
    return m_block, n_block


def _ranges(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


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


def _direction(
    inputs: tuple[torch.Tensor, ...],
    span: tuple[int, int, int, int],
    with_own: bool,
    dtype: torch.dtype,
) -> _Direction:
    queries, clean, means, stds, query_mask, component_mask = inputs
    q0, q1, c0, c1 = span
    a, b = effective_masks(query_mask[q0:q1], component_mask[c0:c1])
    own = (clean[q0:q1], means[q0:q1], stds[q0:q1]) if with_own else None
    with torch.no_grad():
        active = b.unsqueeze(-1)
        centres = torch.where(active, clean[c0:c1].to(dtype), 0.0)
        centres = centres + torch.where(active, means[c0:c1].to(dtype), 0.0)
        scale = scaling(centres, stds[c0:c1], b, dtype)
    return _Direction(queries[q0:q1], a, own, clean[c0:c1], means[c0:c1], stds[c0:c1], b, scale)


def _queries(d: _Direction, rows: tuple[int, int], dtype: torch.dtype) -> QuerySide:
    start, stop = rows
    own = None
    if d.own is not None:
        clean, means, stds = d.own
        own = (clean[start:stop], means[start:stop], stds[start:stop])
    return query_side(d.queries[start:stop], d.query_mask[start:stop], own, d.scale, dtype)


def _components(d: _Direction, rows: tuple[int, int], dtype: torch.dtype) -> ComponentSide:
    start, stop = rows
    return component_side(
        d.clean[start:stop],
        d.means[start:stop],
        d.stds[start:stop],
        d.component_mask[start:stop],
        d.scale,
        dtype,
        d.own is not None,
    )


class Spec(NamedTuple):
    """What the passes need to know besides the tensors (Python values only)."""

    directions: tuple[tuple[int, int, int, int], ...]
    with_own: bool
    max_block_bytes: int
    direct: bool = False  # evaluate the pairs the rounding check flags from their differences


def _plan_blocks(d: _Direction, budget: int, dtype: torch.dtype) -> tuple[list[Any], list[Any]]:
    m, n = d.queries.shape[0], d.clean.shape[0]
    s, e = d.queries.shape[1], d.queries.shape[2]
    itemsize = torch.finfo(dtype).bits // 8
    m_block, n_block = _block_sizes(m, n, 2 * s * e + 2 * s, itemsize, budget)
    return _ranges(m, m_block), _ranges(n, n_block)


def keeps_scores(inputs: tuple[torch.Tensor, ...], spec: Spec, dtype: torch.dtype) -> bool:
    """Whether all pair scores fit in half the budget: then the forward pass keeps them
    and a first-order backward pass does not recompute them (two matrix products fewer)."""
    pairs = sum((q1 - q0) * (c1 - c0) for q0, q1, c0, c1 in spec.directions)
    return pairs * (torch.finfo(dtype).bits // 8) <= spec.max_block_bytes // 2


def forward_pass(
    inputs: tuple[torch.Tensor, ...], spec: Spec, dtype: torch.dtype, check: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query ``logsumexp`` ``(Q,)``, statistics ``(4, Q)``, the largest excess error, and
    the scores of every block flattened in loop order (empty unless :func:`keeps_scores`).

    Statistics: ``sum_j w z``, ``sum_j w sum_P q``, ``sum_j w sum_P p`` and ``|V_i|``.
    """
    keep = keeps_scores(inputs, spec, dtype)
    kept: list[torch.Tensor] = []
    log_sum_exps, all_stats = [], []
    excess = inputs[0].new_zeros((), dtype=dtype)
    for span in spec.directions:
        d = _direction(inputs, span, spec.with_own, dtype)
        query_blocks, component_blocks = _plan_blocks(d, spec.max_block_bytes, dtype)
        a = d.query_mask.to(dtype)
        m = a.shape[0]
        peak = torch.full((m,), -math.inf, dtype=dtype, device=a.device)
        total, score, count = a.new_zeros(m), a.new_zeros(m), a.new_zeros(m)
        weighted_mask, weighted_constants = a.new_zeros(a.shape), a.new_zeros(a.shape)
        own_values: list[torch.Tensor] = []
        for c_rows in component_blocks:
            comp = _components(d, c_rows, dtype)
            for q_rows in query_blocks:
                rows = slice(*q_rows)
                query = _queries(d, q_rows, dtype)
                if query.own is not None and c_rows[0] == 0:
                    own_values.append(query.own.value)
                valid = (query.active @ comp.active.T) > 0
                z = torch.where(valid, query.left @ comp.right.T, -math.inf)
                if check or spec.direct:
                    error = _excess(query, comp, z, valid, dtype)
                    if check:
                        excess = torch.maximum(excess, error.amax() if error.numel() else excess)
                    if spec.direct:
                        z = _corrected(d, q_rows, c_rows, query, comp, z, error, dtype)
                if keep:
                    kept.append(z.reshape(-1))
                old = peak[rows]
                new = torch.maximum(old, z.amax(-1))
                shift = torch.where(torch.isfinite(new), new, 0.0)
                e = (z - shift.unsqueeze(-1)).exp()
                alpha = (old - shift).exp().unsqueeze(-1)
                peak = _put(peak, rows, new)
                total = _put(total, rows, total[rows] * alpha[:, 0] + e.sum(-1))
                weighted_z = (e * torch.where(valid, z, 0.0)).sum(-1)
                score = _put(score, rows, score[rows] * alpha[:, 0] + weighted_z)
                count = _put(count, rows, count[rows] + valid.to(dtype).sum(-1))
                weighted_mask = _put(
                    weighted_mask, rows, weighted_mask[rows] * alpha + e @ comp.active
                )
                weighted_constants = _put(
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
    scores = torch.cat(kept) if kept else inputs[0].new_zeros(0, dtype=dtype)
    return torch.cat(log_sum_exps), torch.cat(all_stats, dim=1), excess, scores


def backward_pass(
    inputs: tuple[torch.Tensor, ...],
    log_sum_exp: torch.Tensor,
    grad: torch.Tensor,
    spec: Spec,
    needs_components: bool,
    scores: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``sum_i grad_i logsumexp_i`` w.r.t. queries, centres and stds.

    Recomputes each block's scores and softmax weights ``exp(z_ij - logsumexp_i)``; built from
    differentiable operations only. The centre gradient is that of the clean embeddings and of
    the means alike.
    """
    dtype = log_sum_exp.dtype
    queries, clean, _, stds, _, _ = inputs
    functional = torch.is_grad_enabled() or torch.compiler.is_compiling() or _is_wrapped(grad)
    grad_queries = _Accumulator(queries, dtype, functional)
    grad_centres = _Accumulator(clean, dtype, functional)
    grad_stds = _Accumulator(stds, dtype, functional)
    offset = position = 0
    for span in spec.directions:
        q0, _, c0, _ = span
        d = _direction(inputs, span, spec.with_own, dtype)
        query_blocks, component_blocks = _plan_blocks(d, spec.max_block_bytes, dtype)
        m = d.queries.shape[0]
        lse = log_sum_exp[offset : offset + m]
        g = torch.where(torch.isfinite(lse), grad[offset : offset + m], 0.0)
        lse = torch.where(torch.isfinite(lse), lse, 0.0)
        offset += m
        for c_rows in component_blocks:
            comp = _components(d, c_rows, dtype)
            grad_right: torch.Tensor | None = None
            for q_rows in query_blocks:
                query = _queries(d, q_rows, dtype)
                shape = (q_rows[1] - q_rows[0], c_rows[1] - c_rows[0])
                if scores is not None and scores.numel():
                    z = scores[position : position + shape[0] * shape[1]].reshape(shape)
                    position += shape[0] * shape[1]
                    valid = torch.isfinite(z)
                else:
                    valid = (query.active @ comp.active.T) > 0
                    z = query.left @ comp.right.T
                    if spec.direct:
                        masked = torch.where(valid, z, -math.inf)
                        error = _excess(query, comp, masked, valid, dtype)
                        z = _corrected(d, q_rows, c_rows, query, comp, z, error, dtype)
                log_w = torch.where(valid, z - lse[q_rows[0] : q_rows[1]].unsqueeze(-1), -math.inf)
                weights = log_w.exp() * g[q_rows[0] : q_rows[1]].unsqueeze(-1)
                if needs_components:
                    update = weights.T @ query.left
                    grad_right = update if grad_right is None else grad_right + update
                grad_y, grad_c, grad_s = query_gradients(query, weights @ comp.right, d.scale)
                grad_queries.add(q0 + q_rows[0], grad_y)
                if grad_c is not None and grad_s is not None:
                    grad_centres.add(q0 + q_rows[0], grad_c)
                    grad_stds.add(q0 + q_rows[0], grad_s)
            if grad_right is not None:
                grad_c, grad_s = component_gradients(comp, grad_right, d.scale)
                grad_centres.add(c0 + c_rows[0], grad_c)
                grad_stds.add(c0 + c_rows[0], grad_s)
    return grad_queries.result(), grad_centres.result(), grad_stds.result()


def _is_wrapped(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.func`` wrapper (in-place updates would not be traced)."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(tensor))


class _Accumulator:
    """Sum of row blocks into a tensor shaped like ``like``: in place, or out of place when a
    graph is being built or under ``torch.func`` (then blocks of equal rows are summed first
    and laid out with one ``cat`` per layer of non-overlapping blocks)."""

    def __init__(self, like: torch.Tensor, dtype: torch.dtype, functional: bool) -> None:
        self.shape, self.dtype, self.device = like.shape, dtype, like.device
        self.functional = functional
        self.pieces: dict[tuple[int, int], torch.Tensor] = {}
        self.buffer = None if functional else like.new_zeros(like.shape, dtype=dtype)

    def add(self, start: int, piece: torch.Tensor) -> None:
        stop = start + piece.shape[0]
        if self.buffer is not None:
            self.buffer[start:stop].add_(piece)
        elif (start, stop) in self.pieces:
            self.pieces[(start, stop)] = self.pieces[(start, stop)] + piece
        else:
            self.pieces[(start, stop)] = piece

    def result(self) -> torch.Tensor:
        if self.buffer is not None:
            return self.buffer
        layers: list[list[tuple[int, int, torch.Tensor]]] = []
        for start, stop in sorted(self.pieces):
            piece = self.pieces[(start, stop)]
            for layer in layers:
                if layer[-1][1] <= start:
                    layer.append((start, stop, piece))
                    break
            else:
                layers.append([(start, stop, piece)])
        total = None
        for layer in layers:
            parts, position = [], 0
            for start, stop, piece in layer:
                if start > position:
                    parts.append(self._zeros(start - position))
                parts.append(piece)
                position = stop
            if position < self.shape[0]:
                parts.append(self._zeros(self.shape[0] - position))
            full = torch.cat(parts)
            total = full if total is None else total + full
        return total if total is not None else self._zeros(self.shape[0])

    def _zeros(self, rows: int) -> torch.Tensor:
        return torch.zeros((rows, *self.shape[1:]), dtype=self.dtype, device=self.device)


def _put(target: torch.Tensor, rows: slice, value: torch.Tensor) -> torch.Tensor:
    """``target`` with ``target[rows] = value``, out of place (safe under ``vmap``)."""
    if rows.start == 0 and rows.stop == target.shape[0]:
        return value
    return torch.cat([target[: rows.start], value, target[rows.stop :]])


def _excess(
    query: Any, comp: Any, z: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Largest rounding error of the expanded distance beyond the tolerance, over valid pairs.

    The magnitude ``0.5 (sum_k y'^2 w + sum_k w c'^2)`` is bounded by
    ``0.5 (|y'|^2 max_k w + sum_k w c'^2)``; NaN (overflow of the expansion) counts as ``inf``.
    """
    n = comp.scaled.shape[0]
    squares = query.scaled.flatten(1).square().sum(-1)
    largest = (
        comp.precision.flatten(1).amax(-1)
        if comp.precision.numel()
        else comp.precision.new_zeros(n)
    )
    k = query.scaled.shape[1] * query.scaled.shape[2]
    s = query.scaled.shape[1]
    u = -comp.right[:, 2 * k : 2 * k + s] - comp.constants  # 0.5 sum_e w c'^2 per position
    magnitude = 0.5 * squares.unsqueeze(-1) * largest + query.active @ u.T
    distance = -(z + _pair_constants(query, comp))
    eps = torch.finfo(dtype).eps
    relative, absolute = TOLERANCES[dtype]
    error = eps * magnitude - relative * distance.abs() - absolute
    return torch.where(valid, torch.nan_to_num(error.detach(), nan=math.inf), -math.inf)


def _pair_constants(query: QuerySide, comp: ComponentSide) -> torch.Tensor:
    """``sum_{s in P(i,j)} (p_js + q_is)`` per pair: the score is ``-(D + this)``."""
    constants = query.active @ comp.constants.T
    if query.own is not None:
        constants = constants + query.own.value @ comp.active.T
    return constants


def _corrected(
    d: _Direction,
    q_rows: tuple[int, int],
    c_rows: tuple[int, int],
    query: QuerySide,
    comp: ComponentSide,
    z: torch.Tensor,
    error: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``z`` with the flagged pairs' distances evaluated from the differences themselves.

    The flagged values are replaced; derivatives still follow the expanded (analytically
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
        exact = -(distance + _pair_constants(query, comp)[rows, cols])
        exact = z.detach().index_put((rows, cols), exact)
    # ``z - z.detach()`` is exactly 0 and carries the derivatives of the expanded expression.
    return torch.where(flagged, exact + (z - z.detach()), z)
