"""The streaming path: blocks of components with a running log-sum-exp, linear memory.

As in flash attention, the forward pass keeps a running maximum and sum per query (and the
softmax-weighted sums of the statistics); no ``(M, N)`` matrix outlives a block. The backward
pass multiplies the weights ``G = g_i exp(z_ij - logsumexp_i)`` of each block into the factors
of :func:`~mi_losses.kernels.factors.sides`; :mod:`~mi_losses.kernels.chain` carries them to
the inputs, added into the gradient buffers block by block. Scores that fit one block are kept
for the backward pass; factors are made one cache-sized chunk of positions at a time (kept only
when there is a single chunk, which the backward pass makes at its peak anyway), so memory stays
linear in the number of samples. With
``create_graph=True`` the backward pass differentiates the reference path (exact second
derivatives). The Triton path (:mod:`mi_losses.kernels.triton`) runs inside the same
:class:`StreamingLogSumExp` with fused block kernels."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

import torch

from mi_losses.kernels.chain import (
    Grads,
    Targets,
    add_component_grads,
    add_grads,
    add_own_grads,
    add_query_grads,
)
from mi_losses.kernels.compiled import Makers, makers
from mi_losses.kernels.directions import (
    Active,
    Direction,
    Own,
    block_rows,
    directions,
    ranges,
)
from mi_losses.kernels.factors import (
    Frame,
    Queries,
    Sides,
    frame,
    own_residual,
    own_term,
)
from mi_losses.kernels.memory import FRESH_BYTES, below_fresh, zeros
from mi_losses.kernels.reference import Result, graph_grads, reference
from mi_losses.kernels.scores import (
    Sums,
    add_sums,
    exp_normal,
    finish,
    pair_sums,
    scores,
    softmax,
    statistics,
    weights,
)
from mi_losses.options import KernelOptions

# The factors of a direction (queries and components) are made CHUNK_BYTES at a time: small
# temporaries stay in the CPU caches and are reused by the allocator, where whole-tensor
# temporaries of tens of MiB are fresh memory (page faults) at every operation.
CHUNK_BYTES = 1 << 21


class Saved(NamedTuple):
    """What the backward pass of one direction keeps: the frame, the scores when they fit one
    block (``None``: made again), and the factors only when all positions are one chunk (the
    backward pass makes them at its peak anyway): memory stays linear in the samples. Several
    chunks' factors are made again, a cache-sized chunk at a time: keeping them all was
    1.1-1.4x slower on sequence rows (fresh whole tensors), with more memory."""

    frame: Frame
    scores: torch.Tensor | None  # z (several blocks), or the softmax weights (one block)
    factors: Sides | None = None  # the one chunk's
    blocks: bool = False  # the scores were made in several blocks of components
    active: Active | None = None  # the rows the blocks gathered (several blocks)
    dense: list[bool] | None = None  # per chunk of positions: every pair active (one block)


class Blocks(Protocol):
    """How a path goes through one direction (torch ops, or Triton kernels): the forward pass
    returns its :class:`Result` and what its backward pass needs."""

    def forward(
        self, d: Direction, dtype: torch.dtype, options: KernelOptions, *, check: bool,
        with_statistics: bool,
    ) -> tuple[Result, Saved]: ...  # fmt: skip

    def backward(
        self,
        d: Direction,
        saved: Saved,
        log_sum_exp: torch.Tensor,
        grad: torch.Tensor,
        options: KernelOptions,
        dtype: torch.dtype,
        out: Targets,
    ) -> None: ...


def columns(
    d: Direction, dtype: torch.dtype, budget: int, *, factors: bool = True,
    active: Active | None = None,
) -> list[tuple[int, int]]:  # fmt: skip
    """Blocks of the components of ``d`` (its ``active`` rows when given) whose ``(m, block)``
    scores, sums, masks and weights (up to about sixteen matrices at the forward pass's peak)
    and, with ``factors``, factors (about six of ``S E`` per component, nine when the block's
    inputs are gathered) fit the budget; on CPU each matrix stays below
    :data:`~mi_losses.kernels.memory.FRESH_BYTES`."""
    m, n = active.sizes(d) if active is not None else (d.queries.shape[0], d.clean.shape[0])
    itemsize = torch.finfo(dtype).bits // 8
    gathered = active is not None and active.components is not None
    features = (9 if gathered else 6) * d.queries.shape[1] * d.queries.shape[2] if factors else 0
    per_column = (16 * m + features) * itemsize
    budget = min(budget, per_column * below_fresh(n, m, itemsize, d.queries.device))
    return block_rows(n, per_column, budget)


def _positions(d: Direction, dtype: torch.dtype) -> list[tuple[int, int]]:
    """Chunks of positions whose factors take about :data:`CHUNK_BYTES`."""
    m, s, e = d.queries.shape
    per_position = (m + d.clean.shape[0]) * max(e, 1) * torch.finfo(dtype).bits // 8
    return ranges(s, max(1, CHUNK_BYTES // max(per_position, 1))) or [(0, s)]


def _dense(d: Direction, chunks: list[tuple[int, int]]) -> list[bool]:
    """Per chunk of positions, whether every query and every component of ``d`` is active at
    all of its positions (there the factors replace nothing: two passes fewer per masked
    input). Found where there are several chunks (2 operations and a host read), not under
    ``torch.compile`` (no host read there: every chunk masks)."""
    if len(chunks) == 1 or not d.a.shape[0] or not d.b.shape[0] or torch.compiler.is_compiling():
        return [False] * len(chunks)
    full = torch.cat([d.a, d.b]).all(0).tolist()
    return [all(full[start:stop]) for start, stop in chunks]


def _row_chunks(d: Direction, dtype: torch.dtype, count: int) -> list[tuple[int, int]]:
    """Chunks of ``count`` query rows: one while their ``(count, S, E)`` temporaries stay below
    :data:`~mi_losses.kernels.memory.FRESH_BYTES` (the allocator reuses that memory), else
    :data:`CHUNK_BYTES` of rows each (fresh tensors of tens of MiB page-fault at every call)."""
    row = math.prod(d.queries.shape[1:]) * dtype.itemsize
    if count * row < FRESH_BYTES:
        return [(0, count)]
    return ranges(count, max(1, CHUNK_BYTES // max(row, 1)))


def _queries(
    d: Direction, rows: torch.Tensor | None, f: Frame, dtype: torch.dtype, make: Makers, *,
    check: bool, values: bool,
) -> Queries:  # fmt: skip
    """The factors of the queries ``rows`` of ``d`` (all of them for ``None``), without their
    residuals, made a chunk of rows at a time (:func:`_row_chunks`) by ``make``: only the
    factors are whole ``(m, S E)`` tensors. The own term is made for all rows and gathered."""
    count = d.queries.shape[0] if rows is None else rows.shape[0]
    chunks = _row_chunks(d, dtype, count)
    if len(chunks) == 1:
        cut = slice(None) if rows is None else rows
        s = make.queries(d.queries[cut], None, d.a[cut], f, dtype, check=check, values=values)
    else:
        a = d.a[rows if rows is not None else slice(None)].to(dtype)
        y = d.queries.new_empty((count, math.prod(d.queries.shape[1:])), dtype=dtype)
        squares = y.new_empty(count) if check and values else None
        s = Queries(y, torch.empty_like(y), a, None, None, squares)
        for r0, r1 in chunks:
            cut = slice(r0, r1) if rows is None else rows[r0:r1]
            part = make.queries(
                d.queries[cut], None, d.a[cut], f, dtype, check=check, values=values
            )
            s.y[r0:r1], s.y2[r0:r1] = part.y, part.y2
            if s.squares is not None and part.squares is not None:
                s.squares[r0:r1] = part.squares
    if d.own is None or not values:
        return s
    q = s.a.new_empty(d.a.shape)
    for r0, r1, on, residual in _own_residuals(d, dtype):
        q[r0:r1] = own_term(*residual, on)
    return s._replace(q=q if rows is None else q[rows])


def _own_residuals(
    d: Direction, dtype: torch.dtype
) -> Iterator[tuple[int, int, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]:
    """``(r0, r1, a, (r, sigma_i))`` of every chunk of query rows of ``d`` (all of them, an own
    term required): the rows' mask as 0/1 and their :func:`own_residual`."""
    assert d.own is not None
    for r0, r1 in _row_chunks(d, dtype, d.queries.shape[0]):
        on, own = d.a[r0:r1].to(dtype), Own(*(t[r0:r1] for t in d.own))
        yield r0, r1, on, own_residual(d.queries[r0:r1], own, on.unsqueeze(-1), dtype)


def _factor_grads(s: Sides, weights: torch.Tensor) -> Grads:
    """The factors' gradients from the weights ``G`` of the pairs of ``s``."""
    q, c = s.queries, s.components
    d_q = weights @ c.b if q.own is not None else None  # minus the gradient of q
    transposed = weights.T
    return Grads(
        weights @ c.wc, weights @ c.w, d_q, transposed @ q.y2, transposed @ q.y, transposed @ q.a
    )


class TorchBlocks:
    """Blocks evaluated with torch operations (any device)."""

    def forward(
        self, d: Direction, dtype: torch.dtype, options: KernelOptions, *, check: bool,
        with_statistics: bool,
    ) -> tuple[Result, Saved]:  # fmt: skip
        budget, make = options.max_block_bytes, makers(options.compiled_factors)
        if len(columns(d, dtype, budget, factors=False)) > 1:
            return self._stream(
                d, dtype, budget, make, check=check, with_statistics=with_statistics
            )
        total: Sums | None = None
        frames = []
        chunks = _positions(d, dtype)
        dense = _dense(d, chunks)
        for (start, stop), full in zip(chunks, dense, strict=True):
            s = make.sides(*d.positions(start, stop), dtype, check=check, dense=full)
            total = add_sums(total, pair_sums(s, check=check, constants=with_statistics))
            frames.append(s.frame)
        assert total is not None
        kept = s if len(chunks) == 1 else None  # made at the backward pass's peak anyway
        block = finish(total, check=check)
        count = block.valid.sum(-1, dtype=dtype)
        softmax_weights, lse = softmax(block.z)
        stats = torch.stack(statistics(block, softmax_weights)) if with_statistics else None
        if block.excess is not None and block.excess.numel():
            excess = block.excess.amax()
        else:
            excess = lse.new_full((), -math.inf)
        joined = (
            frames[0] if len(frames) == 1 else Frame(*map(torch.cat, zip(*frames, strict=True)))
        )
        saved = Saved(joined, softmax_weights, kept, dense=dense)
        return Result(lse, count, stats, excess), saved

    def _stream(
        self, d: Direction, dtype: torch.dtype, budget: int, make: Makers, *, check: bool,
        with_statistics: bool,
    ) -> tuple[Result, Saved]:  # fmt: skip
        """Blocks of components with a running log-sum-exp; the query factors are made once,
        the components' one block at a time, of the active rows only (padding rows take no
        part)."""
        f = frame(d.clean, d.means, d.stds, d.b.to(dtype).unsqueeze(-1), dtype)
        active = Active.of(d)
        queries = _queries(d, active.queries, f, dtype, make, check=check, values=True)
        m, n = active.sizes(d)
        # Scores that take half the budget are kept: two matrix products fewer later.
        kept = (
            queries.y.new_empty((m, n)) if m * n * queries.y.element_size() <= budget // 2 else None
        )
        peak = queries.y.new_full((m,), -math.inf)
        total, score, own, constants, count = queries.y.new_zeros((5, m))
        excess = queries.y.new_full((), -math.inf)
        for c0, c1 in columns(d, dtype, budget, active=active):
            part = d.components(c0, c1, active.components)
            comps = make.components(
                part.clean, part.means, part.stds, part.b, f, dtype, check=check
            )
            block = scores(Sides(queries, comps, f), check=check, constants=with_statistics)
            if kept is not None:
                kept[:, c0:c1] = block.z
            new = torch.maximum(peak, block.z.amax(-1))
            shift = new.masked_fill(new == -math.inf, 0.0)
            e = exp_normal(block.z - shift.unsqueeze(-1))
            alpha = (peak - shift).exp()
            total = total * alpha + e.sum(-1)
            if with_statistics:
                assert block.constants is not None
                score = score * alpha + (e * block.z.masked_fill(~block.valid, 0.0)).sum(-1)
                if block.own is not None:
                    own = own * alpha + (e * block.own).sum(-1)
                constants = constants * alpha + (e * block.constants).sum(-1)
            count = count + block.valid.sum(-1)
            peak = new
            if block.excess is not None and block.excess.numel():
                excess = torch.maximum(excess, block.excess.amax())
        has = count > 0
        total = torch.where(has, total, 1.0)
        lse = (peak.masked_fill(~has, 0.0) + total.log()).masked_fill(~has, -math.inf)
        stats = torch.stack([score, own, constants]) / total if with_statistics else None
        if active.queries is not None:  # the inactive queries: no valid pair
            rows, size = active.queries, d.queries.shape[0]
            lse = lse.new_full((size,), -math.inf).index_copy_(0, rows, lse)
            count = count.new_zeros(size).index_copy_(0, rows, count)
            if stats is not None:
                stats = stats.new_zeros(3, size).index_copy_(1, rows, stats)
        return Result(lse, count, stats, excess), Saved(f, kept, None, True, active)

    def backward(
        self,
        d: Direction,
        saved: Saved,
        log_sum_exp: torch.Tensor,
        grad: torch.Tensor,
        options: KernelOptions,
        dtype: torch.dtype,
        out: Targets,
    ) -> None:
        make = makers(options.compiled_factors)
        if saved.blocks:
            budget = options.max_block_bytes
            finite = finite_log_sum_exp(log_sum_exp)
            self._stream_backward(d, saved, (finite, grad), budget, dtype, make, out)
            return
        assert saved.scores is not None and saved.dense is not None
        weights = saved.scores * grad.unsqueeze(-1)  # the softmax weights times the gradient
        for (start, stop), full in zip(_positions(d, dtype), saved.dense, strict=True):
            s = saved.factors
            if s is None:
                f = saved.frame.positions(start, stop)
                s = make.sides(
                    *d.positions(start, stop), dtype, check=False, values=False, frame_=f,
                    dense=full,
                )  # fmt: skip
            add_grads(s, _factor_grads(s, weights), out.positions(start, stop))

    def _stream_backward(
        self, d: Direction, saved: Saved, upstream: tuple[torch.Tensor, torch.Tensor],
        budget: int, dtype: torch.dtype, make: Makers, out: Targets,
    ) -> None:  # fmt: skip
        """The blocks made again: each block's components get their gradients at once, the
        queries' factor gradients are summed over the blocks. ``upstream``: the forward pass's
        ``logsumexp`` and the gradient of the loss with respect to it."""
        log_sum_exp, grad = upstream
        active = saved.active
        assert active is not None
        rows = active.queries
        if rows is not None:
            log_sum_exp, grad = log_sum_exp[rows], grad[rows]
        f, again = saved.frame, saved.scores is None  # the scores made again, or kept
        # q enters the scores only
        queries = _queries(
            d if again else d._replace(own=None), rows, f, dtype, make, check=False, values=again
        )
        # The queries' rows of the gradient buffer are this direction's alone (the plan's query
        # spans never overlap) and hold zeros: d y' is summed in its first rows, one per active
        # query, finished in place, then moved to the active queries' rows.
        scratch = out.queries[: queries.y.shape[0]] if out.queries is not None else None
        d_y = scratch.flatten(1) if scratch is not None else torch.zeros_like(queries.y)
        d_y2 = torch.zeros_like(queries.y)
        d_q = torch.zeros_like(queries.a) if d.own is not None else None
        blocks = columns(d, dtype, budget, active=active)
        for c0, c1 in blocks:
            part = d.components(c0, c1, active.components)
            comps = make.components(
                part.clean, part.means, part.stds, part.b, f, dtype, check=False, values=again
            )
            del part  # gathered inputs
            if saved.scores is None:
                g = weights(Sides(queries, comps, f), log_sum_exp, grad)
            else:
                g = exp_normal(saved.scores[:, c0:c1] - log_sum_exp.unsqueeze(-1), inplace=True)
                g.mul_(grad.unsqueeze(-1))
            d_y.addmm_(g, comps.wc)
            d_y2.addmm_(g, comps.w)
            if d_q is not None:
                d_q.addmm_(g, comps.b)  # minus the gradient of q
            transposed = g.T
            add_component_grads(
                comps, f, transposed @ queries.y2, transposed @ queries.y, transposed @ queries.a,
                out.components(c0, c1, active.components),
            )  # fmt: skip
        target = out._replace(queries=scratch)
        add_query_grads(queries, f, d_y, d_y2, None, target, summed=scratch is not None)
        # Before the own terms' residuals are made: the query factors and the last block's.
        del queries, d_y, d_y2
        if blocks:
            del comps, g, transposed
        if rows is not None and scratch is not None and out.queries is not None:
            # Last chunk first: active row i moves to rows[i] >= i, never onto a row to move.
            for r0, r1 in reversed(_row_chunks(d, dtype, rows.shape[0])):
                moved = scratch[r0:r1].clone()
                scratch[r0:r1] = 0.0
                out.queries.index_copy_(0, rows[r0:r1], moved)
        if d.own is not None:
            assert d_q is not None
            if rows is not None:
                d_q = d_q.new_zeros(d.a.shape).index_copy_(0, rows, d_q)
            for r0, r1, on, residual in _own_residuals(d, dtype):
                rows_of = [None if t is None else t[r0:r1] for t in out[:3]]
                target = Targets(rows_of[0], rows_of[1], rows_of[2], None, None)
                add_own_grads(*residual, on, d_q[r0:r1], target)


def finite_log_sum_exp(log_sum_exp: torch.Tensor) -> torch.Tensor:
    """``log_sum_exp`` with ``0`` for the queries without a valid pair (``-inf``; their
    gradient is 0): ``z - logsumexp`` is then ``-inf``, not NaN, for their pairs."""
    return log_sum_exp.nan_to_num(math.nan, math.inf, 0.0)


def join(parts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat(parts, dim)`` without a copy for a single part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


class StreamingLogSumExp(torch.autograd.Function):
    """``logsumexp_{j in V_i} z_ij`` per query through ``blocks``; the counts, statistics and
    rounding excess are outputs without gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        queries: torch.Tensor,
        clean: torch.Tensor,
        means: torch.Tensor,
        stds: torch.Tensor,
        query_mask: torch.Tensor,
        component_mask: torch.Tensor,
        plan: Any,
        blocks: Blocks,
        check: bool,
    ) -> tuple[torch.Tensor, ...]:
        inputs = (queries, clean, means, stds, query_mask, component_mask)
        options, stats = plan.options, plan.with_statistics
        parts = directions(inputs, plan.directions, plan.with_own)
        runs = [
            blocks.forward(d, plan.dtype, options, check=check, with_statistics=stats)
            for d in parts
        ]
        results = [result for result, _ in runs]
        excess = torch.stack([r.excess for r in results]).amax() if len(results) > 1 else None
        lse = join([r.log_sum_exp for r in results])
        num_valid = join([r.num_valid for r in results])
        ctx.save_for_backward(*inputs, lse, num_valid)
        ctx.parts, ctx.saved, ctx.plan, ctx.blocks = parts, [s for _, s in runs], plan, blocks
        outputs = [lse, num_valid]
        if stats:
            outputs.append(join([r.stats for r in results if r.stats is not None], 1))
        if excess is None:
            excess = results[0].excess if results else queries.new_full((), -math.inf)
        ctx.mark_non_differentiable(*outputs[1:], excess)
        ctx.set_materialize_grads(False)  # the outputs without gradient get no zeros
        return (*outputs, excess)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None, *_: Any) -> tuple[torch.Tensor | None, ...]:
        if grad is None:  # no gradient reached the logsumexp (grads are not materialised)
            return (None,) * 9
        *inputs, lse, num_valid = ctx.saved_tensors
        plan, needs = ctx.plan, ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():
            # A graph is being built (second derivatives): differentiate the reference path.
            exact = reference(
                tuple(inputs), plan.directions, with_own=plan.with_own, dtype=plan.dtype,
                check=False, with_statistics=False,
            )  # fmt: skip
            grads = graph_grads((exact.log_sum_exp,), (grad,), tuple(inputs[:4]), needs)
            return (*grads, None, None, None, None, None)
        grad = grad.masked_fill(num_valid == 0, 0.0)  # logsumexp -inf: no gradient

        def buffer(like: torch.Tensor, need: bool) -> torch.Tensor | None:
            return zeros(like.shape, plan.dtype, like.device) if need else None

        queries = buffer(inputs[0], needs[0])
        centres = buffer(inputs[1], needs[1] or needs[2])  # d mu = d x: one buffer
        stds = buffer(inputs[3], needs[3])
        offset = 0
        for (q0, q1, c0, c1), d, saved in zip(plan.directions, ctx.parts, ctx.saved, strict=True):
            rows = slice(offset, offset + q1 - q0)
            offset += q1 - q0
            own = (
                (_row_slice(centres, q0, q1), _row_slice(stds, q0, q1))
                if plan.with_own
                else (None, None)
            )
            out = Targets(
                _row_slice(queries, q0, q1),
                *own,
                _row_slice(centres, c0, c1),
                _row_slice(stds, c0, c1),
            )
            upstream = (
                _row_slice(lse, rows.start, rows.stop),
                _row_slice(grad, rows.start, rows.stop),
            )
            ctx.blocks.backward(d, saved, *upstream, plan.options, plan.dtype, out)
        found = (queries, centres, centres, stds)
        return (
            *(
                None if g is None or not need else g.to(t.dtype)
                for g, t, need in zip(found, inputs[:4], needs, strict=True)
            ),
            None, None, None, None, None,
        )  # fmt: skip


def _row_slice(t: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """Rows ``[start, stop)`` of ``t`` (a view), ``t`` itself when that is all of it."""
    if t is None or (start == 0 and stop == t.shape[0]):
        return t
    return t[start:stop]
