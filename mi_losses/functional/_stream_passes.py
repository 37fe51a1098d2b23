"""Forward and backward passes of the streaming kernel, block by block (see ``_streaming``).

Two ways through the pairs, chosen per call by :func:`storage`:

- **position chunks** (every pair score fits in the budget, the usual case at sequence
  granularity): one block of all queries against all components, its scores accumulated over
  chunks of positions whose elementwise work stays in the processor's cache; the backward pass
  prepares each chunk again and writes its gradients in place.
- **row blocks** (large ``M`` and ``N``, token granularity): blocks of queries and of
  components with a running ``logsumexp``, the scores kept when they fit, else recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch

from mi_losses.functional._accumulators import Accumulator, is_wrapped, put
from mi_losses.functional._accuracy import (
    Summary,
    concatenate,
    corrected,
    direct_gradients,
    excess,
    summary,
)
from mi_losses.functional._pair_terms import (
    ComponentSide,
    QuerySide,
    Scaling,
    component_side,
    query_side,
    scaling,
    scores,
)
from mi_losses.functional._stream_gradients import Gradients, cache_sized, ranges


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


def storage(inputs: tuple[torch.Tensor, ...], spec: Spec, dtype: torch.dtype) -> str:
    """How the passes go through the pairs, within the budget.

    ``"chunks"``: all pairs in one block over chunks of positions, scores kept for the
    backward pass; ``"scores"``: row blocks, scores kept (two matrix products fewer);
    ``"none"``: row blocks, the backward pass recomputes each block.
    """
    e, itemsize = inputs[0].shape[2], torch.finfo(dtype).bits // 8
    pairs = sum((q1 - q0) * (c1 - c0) for q0, q1, c0, c1 in spec.directions)
    rows = max([q1 - q0 + c1 - c0 for q0, q1, c0, c1 in spec.directions] + [0])
    fits = pairs * itemsize <= spec.max_block_bytes // 2
    if fits and 8 * rows * e * itemsize <= spec.max_block_bytes // 2:  # ~8 (rows, 1, E) tensors
        return "chunks"
    return "scores" if fits else "none"


def _position_chunks(
    inputs: tuple[torch.Tensor, ...], spec: Spec, dtype: torch.dtype, whole: bool
) -> list[tuple[int, int]]:
    """The same partition of the positions for every direction (``whole``: one chunk)."""
    s, e = inputs[0].shape[1], inputs[0].shape[2]
    if whole:
        return [(0, s)]
    rows = max([q1 - q0 + c1 - c0 for q0, q1, c0, c1 in spec.directions] + [1])
    unit = rows * e * (torch.finfo(dtype).bits // 8)
    return cache_sized(s, unit, inputs[0].device, spec.max_block_bytes) or [(0, 0)]


def _blocks(
    m: int, n: int, k: int, itemsize: int, budget: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Row ranges of queries and of components: half the budget for the component factors
    (four ``K``-wide tensors per row), half for the query factors and the block's scores."""
    n_block = max(1, min(n, budget // 2 // max(4 * k * itemsize, 1)))
    m_block = max(1, min(m, budget // 2 // max((4 * k + 6 * n_block) * itemsize, 1)))
    return ranges(m, m_block), ranges(n, n_block)


def _row_blocks(
    inputs: tuple[torch.Tensor, ...],
    span: tuple[int, int, int, int],
    spec: Spec,
    dtype: torch.dtype,
    chunks: list[tuple[int, int]] | None,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Row ranges of one direction's queries and components: one block each over position
    ``chunks``, else from the budget."""
    q0, q1, c0, c1 = span
    m, n = q1 - q0, c1 - c0
    if chunks is not None:
        return ranges(m, max(m, 1)), ranges(n, max(n, 1))
    k, itemsize = inputs[0].shape[1] * inputs[0].shape[2], torch.finfo(dtype).bits // 8
    return _blocks(m, n, k, itemsize, spec.max_block_bytes)


class _Direction(NamedTuple):
    """One direction's inputs, restricted to its rows (and positions) and effective masks."""

    queries: torch.Tensor
    query_mask: torch.Tensor
    own: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    clean: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    component_mask: torch.Tensor
    scale: Scaling | None  # None: not computed (the direction's rows and masks only)

    def queries_block(
        self, rows: tuple[int, int], dtype: torch.dtype, values: bool = True
    ) -> QuerySide:
        start, stop = rows
        own = None
        if self.own is not None:
            clean, means, stds = self.own
            own = (clean[start:stop], means[start:stop], stds[start:stop])
        mask = self.query_mask[start:stop]
        assert self.scale is not None
        return query_side(self.queries[start:stop], mask, own, self.scale, dtype, values)

    def components_block(
        self, rows: tuple[int, int], dtype: torch.dtype, values: bool = True
    ) -> ComponentSide:
        start, stop = rows
        assert self.scale is not None
        return component_side(
            self.clean[start:stop],
            self.means[start:stop],
            self.stds[start:stop],
            self.component_mask[start:stop],
            self.scale,
            dtype,
            self.own is not None,
            values,
        )


def _direction(
    inputs: tuple[torch.Tensor, ...],
    span: tuple[int, int, int, int],
    with_own: bool,
    dtype: torch.dtype,
    positions: tuple[int, int] | None = None,
    scaled: bool = True,
) -> _Direction:
    queries, clean, means, stds, query_mask, component_mask = inputs
    q0, q1, c0, c1 = span
    a, b = effective_masks(query_mask[q0:q1], component_mask[c0:c1])
    cols = slice(*positions) if positions is not None else slice(None)
    a, b = a[:, cols], b[:, cols]
    own = (clean[q0:q1, cols], means[q0:q1, cols], stds[q0:q1, cols]) if with_own else None
    clean, means, stds = clean[c0:c1, cols], means[c0:c1, cols], stds[c0:c1, cols]
    scale = scaling(clean, means, stds, b, dtype) if scaled else None
    return _Direction(queries[q0:q1, cols], a, own, clean, means, stds, b, scale)


def _chunked_block(
    inputs: tuple[torch.Tensor, ...],
    span: tuple[int, int, int, int],
    spec: Spec,
    chunks: list[tuple[int, int]],
    dtype: torch.dtype,
    rounding: bool,
) -> tuple[torch.Tensor, Summary]:
    """Scores of all pairs of a direction (summed over position chunks) and their summary."""
    q0, q1, c0, c1 = span
    m, n = q1 - q0, c1 - c0
    z = inputs[0].new_zeros((m, n), dtype=dtype)
    parts: list[Summary] = []
    for positions in chunks:
        d = _direction(inputs, span, spec.with_own, dtype, positions)
        query, comp = d.queries_block((0, m), dtype), d.components_block((0, n), dtype)
        z = z + scores(query, comp)
        parts.append(summary(query, comp, rounding))
    return z, concatenate(parts)


class _Block(NamedTuple):
    """One block of pairs of a direction: where it lies and what is already prepared."""

    d: _Direction
    inputs: tuple[torch.Tensor, ...]
    span: tuple[int, int, int, int]
    spec: Spec
    chunks: list[tuple[int, int]] | None  # all pairs over chunks of positions, or row blocks
    rows: tuple[tuple[int, int], tuple[int, int]]  # of the queries and of the components
    comp: ComponentSide | None  # prepared components of a row block
    query: QuerySide | None  # prepared queries of a row block (None: prepared here)
    dtype: torch.dtype


def _block_scores(
    block: _Block, check: bool
) -> tuple[torch.Tensor, torch.Tensor, Summary, torch.Tensor | None]:
    """A block's scores (``-inf`` for invalid pairs, flagged pairs evaluated directly when
    ``spec.direct``), valid pairs, summary and rounding excess (with ``check`` or direct)."""
    d, inputs, span, spec, chunks, rows, comp, query, dtype = block
    q_rows, c_rows = rows
    rounding = check or spec.direct
    if chunks is not None:
        z, facts = _chunked_block(inputs, span, spec, chunks, dtype, rounding)
    else:
        assert comp is not None
        query = query if query is not None else d.queries_block(q_rows, dtype)
        z, facts = scores(query, comp), summary(query, comp, rounding)
    valid = (facts.query_active @ facts.component_active.T) > 0
    z = torch.where(valid, z, -math.inf)
    error = None
    if rounding:
        error = excess(facts, z, valid, dtype)
        if spec.direct:
            z = corrected(d, q_rows, c_rows, facts, z, error, dtype)
    return z, valid, facts, error


def forward_pass(
    inputs: tuple[torch.Tensor, ...], spec: Spec, dtype: torch.dtype, check: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Per-query ``logsumexp`` ``(Q,)``, statistics ``(4, Q)``, the largest excess error, and
    the scores the backward pass may reuse (see :func:`storage`).

    Statistics: ``sum_j w z``, ``sum_j w sum_P q``, ``sum_j w sum_P p`` and ``|V_i|``.
    """
    keep = storage(inputs, spec, dtype)
    chunks = _position_chunks(inputs, spec, dtype, False) if keep == "chunks" else None
    kept: list[torch.Tensor] = []
    log_sum_exps, all_stats = [], []
    largest = inputs[0].new_zeros((), dtype=dtype)
    for span in spec.directions:
        m = span[1] - span[0]
        query_blocks, component_blocks = _row_blocks(inputs, span, spec, dtype, chunks)
        d = _direction(inputs, span, spec.with_own, dtype, scaled=chunks is None)
        a = d.query_mask.to(dtype)
        peak = torch.full((m,), -math.inf, dtype=dtype, device=a.device)
        total, score, count = a.new_zeros(m), a.new_zeros(m), a.new_zeros(m)
        weighted_mask, weighted_constants = a.new_zeros(a.shape), a.new_zeros(a.shape)
        own_values: list[torch.Tensor] = []
        for c_rows in component_blocks:
            comp = None if chunks is not None else d.components_block(c_rows, dtype)
            for q_rows in query_blocks:
                rows = slice(*q_rows)
                block = _Block(d, inputs, span, spec, chunks, (q_rows, c_rows), comp, None, dtype)
                z, valid, facts, error = _block_scores(block, check)
                if check and error is not None and error.numel():
                    largest = torch.maximum(largest, error.amax())
                if facts.own_value is not None and c_rows[0] == 0:
                    own_values.append(facts.own_value)
                if keep != "none":
                    kept.append(z)
                old = peak[rows]
                new = torch.maximum(old, z.amax(-1))
                shift = torch.where(torch.isfinite(new), new, 0.0)
                e = _exp(z - shift.unsqueeze(-1))
                alpha = (old - shift).exp().unsqueeze(-1)
                peak = put(peak, rows, new)
                total = put(total, rows, total[rows] * alpha[:, 0] + e.sum(-1))
                weighted_z = (e * torch.where(valid, z, 0.0)).sum(-1)
                score = put(score, rows, score[rows] * alpha[:, 0] + weighted_z)
                count = put(count, rows, count[rows] + valid.to(dtype).sum(-1))
                weighted_mask = put(
                    weighted_mask, rows, weighted_mask[rows] * alpha + e @ facts.component_active
                )
                weighted_constants = put(
                    weighted_constants,
                    rows,
                    weighted_constants[rows] * alpha + e @ facts.component_constants,
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


def _exp(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` with results below the smallest normal number set to 0 (a subnormal result is
    many times slower on CPU; the weights lost are below ``1e-38`` of the largest)."""
    return torch.where(x < math.log(torch.finfo(x.dtype).tiny), -math.inf, x).exp()


def backward_pass(
    inputs: tuple[torch.Tensor, ...],
    log_sum_exp: torch.Tensor,
    grad: torch.Tensor,
    spec: Spec,
    needs_components: bool,
    cache: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``sum_i grad_i logsumexp_i`` w.r.t. queries, centres and stds.

    Takes each block's scores from ``cache`` (what :func:`forward_pass` kept) or recomputes
    them, then the softmax weights ``exp(z_ij - logsumexp_i)``, and prepares each block (or
    chunk of positions) again for the chain rule; built from differentiable operations only.
    The centre gradient is that of the clean embeddings and of the means alike.
    """
    dtype = log_sum_exp.dtype
    queries, clean, _, stds, _, _ = inputs
    functional = torch.is_grad_enabled() or torch.compiler.is_compiling() or is_wrapped(grad)
    chunks = None
    if storage(inputs, spec, dtype) == "chunks":
        chunks = _position_chunks(inputs, spec, dtype, functional)
    out = Gradients(
        Accumulator(queries, dtype, functional),
        Accumulator(clean, dtype, functional),
        Accumulator(stds, dtype, functional),
        needs_components,
        functional,
        spec.max_block_bytes,
    )
    kept = iter(cache) if cache else None  # the forward pass's scores, block by block
    offset = 0
    for span in spec.directions:
        q0, q1, c0, c1 = span
        m, n = q1 - q0, c1 - c0
        query_blocks, component_blocks = _row_blocks(inputs, span, spec, dtype, chunks)
        d = _direction(inputs, span, spec.with_own, dtype, scaled=chunks is None)
        lse = log_sum_exp[offset : offset + m]
        g = torch.where(torch.isfinite(lse), grad[offset : offset + m], 0.0)
        lse = torch.where(torch.isfinite(lse), lse, 0.0)
        offset += m
        for c_rows in component_blocks:
            # Scores recomputed from the factors need their values; the chain rule does not.
            values = kept is None or spec.direct
            comp = None if chunks is not None else d.components_block(c_rows, dtype, values)
            for q_rows in query_blocks:
                query = None if chunks is not None else d.queries_block(q_rows, dtype, values)
                rows = (q_rows, c_rows)
                block = _Block(d, inputs, span, spec, chunks, rows, comp, query, dtype)
                z, flagged = _backward_scores(block, kept)
                valid = torch.isfinite(z)
                log_w = torch.where(valid, z - lse[q_rows[0] : q_rows[1]].unsqueeze(-1), -math.inf)
                weights = _exp(log_w) * g[q_rows[0] : q_rows[1]].unsqueeze(-1)
                distance_weights = None
                if flagged is not None:  # their distance derivatives from the differences
                    distance_weights = torch.where(flagged, 0.0, weights)
                    direct = direct_gradients(d, q_rows, c_rows, flagged, weights, dtype)
                    for p0, p1 in chunks or [(0, inputs[0].shape[1])]:
                        cols = (p0, p1)
                        out.queries.add(q0 + q_rows[0], direct.queries[:, p0:p1], cols)
                        if needs_components:
                            out.centres.add(c0 + c_rows[0], direct.centres[:, p0:p1], cols)
                            out.stds.add(c0 + c_rows[0], direct.stds[:, p0:p1], cols)
                pair_weights = (weights, distance_weights)
                if chunks is None:
                    assert comp is not None and query is not None
                    starts = (q0 + q_rows[0], c0 + c_rows[0])
                    out.add_block(d, starts, query, comp, pair_weights, None)
                for positions in chunks or []:
                    part = _direction(inputs, span, spec.with_own, dtype, positions)
                    query = part.queries_block((0, m), dtype, values=False)
                    part_comp = part.components_block((0, n), dtype, values=False)
                    out.add_block(part, (q0, c0), query, part_comp, pair_weights, positions)
    return out.queries.result(), out.centres.result(), out.stds.result()


def _backward_scores(
    block: _Block, kept: Iterator[torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A block's scores as the forward pass computed them: ``kept`` or recomputed; with
    ``spec.direct``, also the pairs the rounding check flags."""
    if kept is not None and not block.spec.direct:
        return next(kept), None
    z, _, _, error = _block_scores(block, False)
    if kept is not None:
        z = next(kept)
    return z, None if error is None else error > 0
