"""The streaming path: blocks of components with a running log-sum-exp, linear memory.

As in flash attention, the forward pass keeps a running maximum and sum per query (and the
softmax-weighted sums of the statistics); no ``(M, N)`` matrix outlives a block. The backward
pass takes the weights ``G = g_i exp(z_ij - logsumexp_i)`` of each block and multiplies them
into the factors of :func:`~mi_losses.kernels.factors.sides` (``d y' = G wc``,
``d wn = G^T y'^2``, ...); :func:`~mi_losses.kernels.factors.chain` carries them back to the
inputs in a few elementwise passes. When all scores of a direction fit one block (the common
case) they are kept for the backward pass, and the factors are made one cache-sized chunk of
positions at a time (kept for the backward pass within the block budget, else made again
there): the elementwise work then stays in the CPU's caches instead of streaming whole
``(rows, S, E)`` tensors through memory some sixty times.
When a graph is being built (``create_graph=True``) the backward pass differentiates the
reference path instead: second derivatives are exact. The Triton path
(:mod:`mi_losses.kernels.triton`) runs inside the same :class:`StreamingLogSumExp` with fused
block kernels.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from mi_losses.kernels.factors import (
    Direction,
    Frame,
    Grads,
    Sides,
    Sums,
    add_sums,
    block_rows,
    chain,
    directions,
    exp_normal,
    finish,
    pair_sums,
    ranges,
    scores,
    sides,
    statistics,
)
from mi_losses.kernels.reference import Result, log_sum_exp, reference

# The factors of a direction (queries and components) are made CHUNK_BYTES at a time: small
# temporaries stay in the CPU caches and are reused by the allocator, where whole-tensor
# temporaries of tens of MiB are fresh memory (page faults) at every operation.
CHUNK_BYTES = 1 << 20

InputGrads = tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...]]
"""Gradients of one direction (:func:`~mi_losses.kernels.factors.chain`)."""

Outputs = tuple[torch.Tensor | None, ...]
"""Where one direction's gradients are added (rows of the inputs' gradient buffers, ``None``
where not wanted): queries, own ``x, mu, sigma`` (``None`` without), components' ``x, mu, sigma``."""


def deposit(out: Outputs, grads: InputGrads, start: int, stop: int) -> None:
    """Add ``grads`` (:func:`~mi_losses.kernels.factors.chain`'s, positions ``[start, stop)``)
    into ``out``."""
    d_queries, d_own, (d_x, d_sigma) = grads
    own = (None, None, None) if d_own is None else (d_own[0], d_own[0], d_own[1])
    values = (d_queries, *own, d_x, d_x, d_sigma)
    signs = (1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0)  # chain gives -d x of the own terms
    for target, value, sign in zip(out, values, signs, strict=True):
        if target is not None and value is not None:
            if start != 0 or stop != target.shape[1]:
                target = target[:, start:stop]
            target.add_(value, alpha=sign)


class Blocks(Protocol):
    """How a path goes through one direction (torch ops, or Triton kernels): the forward pass
    returns its :class:`Result` and what its backward pass needs."""

    def forward(
        self, d: Direction, dtype: torch.dtype, budget: int, check: bool, with_statistics: bool
    ) -> tuple[Result, Any]: ...

    def backward(
        self,
        d: Direction,
        saved: Any,
        log_sum_exp: torch.Tensor,
        grad: torch.Tensor,
        budget: int,
        dtype: torch.dtype,
        out: Outputs,
    ) -> None: ...


def _columns(m: int, n: int, dtype: torch.dtype, budget: int) -> list[tuple[int, int]]:
    """Blocks of the ``n`` components whose ``(m, block)`` scores and weights (about eight
    matrices) fit the budget."""
    return block_rows(n, 8 * m * torch.finfo(dtype).bits // 8, budget)


def _positions(d: Direction, dtype: torch.dtype) -> list[tuple[int, int]]:
    """Chunks of positions whose factors take about :data:`CHUNK_BYTES`."""
    m, s, e = d[0].shape
    per_position = (m + d[2].shape[0]) * max(e, 1) * torch.finfo(dtype).bits // 8
    return ranges(s, max(1, CHUNK_BYTES // max(per_position, 1))) or [(0, s)]


def _factor_bytes(d: Direction, dtype: torch.dtype) -> int:
    """About what the factors of a direction hold (``y', y'^2``, own terms; ``w, w c', c'``)."""
    m, s, e = d[0].shape
    return (4 * m + 3 * d[2].shape[0]) * s * e * torch.finfo(dtype).bits // 8


def _at(d: Direction, start: int, stop: int) -> Direction:
    """The direction restricted to positions ``[start, stop)``."""
    if start == 0 and stop == d[0].shape[1]:
        return d
    cut = (slice(None), slice(start, stop))
    queries, own, clean, means, stds, a, b = d
    own_cut = None if own is None else (own[0][cut], own[1][cut], own[2][cut])
    return queries[cut], own_cut, clean[cut], means[cut], stds[cut], a[cut], b[cut]


def _factor_grads(s: Sides, weights: torch.Tensor, total: Grads | None = None) -> Grads:
    """The factors' gradients from the weights of the pairs of ``s``. With ``total`` (those of
    earlier blocks of components) the queries' gradients are added into it, in place; the
    components' are always those of ``s``."""
    transposed = weights.T
    if total is None:
        d_y, d_y2 = weights @ s.wc, weights @ s.w
        d_q = -(weights @ s.b) if s.own is not None else None
    else:
        d_y, d_y2 = total.y.addmm_(weights, s.wc), total.y2.addmm_(weights, s.w)
        d_q = None if total.q is None else total.q.addmm_(weights, s.b, alpha=-1.0)
    return Grads(d_y, d_y2, d_q, transposed @ s.y2, transposed @ s.y, transposed @ s.a)


class TorchBlocks:
    """Blocks evaluated with torch operations (any device)."""

    def forward(
        self, d: Direction, dtype: torch.dtype, budget: int, check: bool, with_statistics: bool
    ) -> tuple[Result, Any]:
        if len(_columns(d[0].shape[0], d[2].shape[0], dtype, budget)) > 1:
            s = sides(*d, dtype, check)
            # Only the frame is kept: the backward pass makes the factors again (linear memory).
            return self._stream(s, budget, check, with_statistics), s.frame
        total: Sums | None = None
        keep = _factor_bytes(d, dtype) <= budget  # else made again in the backward pass
        kept: list[Sides | Frame] = []
        for start, stop in _positions(d, dtype):
            s = sides(*_at(d, start, stop), dtype, check)
            total = add_sums(total, pair_sums(s, check, with_statistics))
            kept.append(s if keep else s.frame)
        assert total is not None
        block = finish(total, check)
        count = block.valid.sum(-1).to(dtype)
        lse = log_sum_exp(block.z, count > 0)
        stats = torch.stack(statistics(block)) if with_statistics else None
        excess = lse.new_full((), -math.inf)
        if block.excess is not None and block.excess.numel():
            excess = block.excess.amax()
        return Result(lse, count, stats, excess), (block.z, kept)

    def _stream(self, s: Sides, budget: int, check: bool, with_statistics: bool) -> Result:
        m = s.y.shape[0]
        peak = s.y.new_full((m,), -math.inf)
        total, score, own, constants, count = s.y.new_zeros((5, m))
        excess = s.y.new_full((), -math.inf)
        for c0, c1 in _columns(s.y.shape[0], s.w.shape[0], s.y.dtype, budget):
            block = scores(s.columns(c0, c1), check, constants=with_statistics)
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
        return Result(lse, count, stats, excess)

    def backward(
        self,
        d: Direction,
        saved: Any,
        log_sum_exp: torch.Tensor,
        grad: torch.Tensor,
        budget: int,
        dtype: torch.dtype,
        out: Outputs,
    ) -> None:
        if isinstance(saved, Frame):
            s = sides(*d, dtype, False, frame_=saved)
            deposit(
                out, chain(d, s, self._stream_grads(s, log_sum_exp, grad, budget)), 0, d[0].shape[1]
            )
            return
        z, kept = saved
        weights = exp_normal(z - log_sum_exp.unsqueeze(-1)) * grad.unsqueeze(-1)
        for (start, stop), factors in zip(_positions(d, dtype), kept, strict=True):
            part = _at(d, start, stop)
            if isinstance(factors, Frame):
                factors = sides(*part, dtype, False, values=False, frame_=factors)
            deposit(out, chain(part, factors, _factor_grads(factors, weights)), start, stop)

    def _stream_grads(
        self, s: Sides, log_sum_exp: torch.Tensor, grad: torch.Tensor, budget: int
    ) -> Grads:
        total = None
        d_w, d_wc, d_k = [], [], []
        for c0, c1 in _columns(s.y.shape[0], s.w.shape[0], s.y.dtype, budget):
            t = s.columns(c0, c1)
            weights = exp_normal(scores(t, False).z - log_sum_exp.unsqueeze(-1))
            total = _factor_grads(t, weights * grad.unsqueeze(-1), total)
            d_w.append(total.w)
            d_wc.append(total.wc)
            d_k.append(total.k)
        assert total is not None  # several blocks: there are components
        return total._replace(w=join(d_w), wc=join(d_wc), k=join(d_k))


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
        budget, stats = plan.options.max_block_bytes, plan.with_statistics
        parts = directions(inputs, plan.directions, plan.with_own)
        runs = [blocks.forward(d, plan.dtype, budget, check, stats) for d in parts]
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
        return (*outputs, excess)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        *inputs, lse, num_valid = ctx.saved_tensors
        plan, needs = ctx.plan, ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():
            # A graph is being built (second derivatives): differentiate the reference path.
            wanted = [t for t, need in zip(inputs[:4], needs, strict=True) if need]
            exact = reference(
                tuple(inputs), plan.directions, plan.with_own, plan.dtype, False, False
            )
            grads = iter(
                torch.autograd.grad(
                    exact.log_sum_exp, wanted, grad, create_graph=True, allow_unused=True
                )
            )
            result = []
            for tensor, need in zip(inputs[:4], needs, strict=True):
                value = next(grads) if need else None
                result.append(torch.zeros_like(tensor) if need and value is None else value)
            return (*result, None, None, None, None, None)
        empty = num_valid == 0  # logsumexp -inf, no gradient
        lse = lse.masked_fill(empty, 0.0)
        grad = grad.masked_fill(empty, 0.0)
        buffers = [
            torch.zeros(t.shape, dtype=plan.dtype, device=t.device) if need else None
            for t, need in zip(inputs[:4], needs, strict=True)
        ]
        queries, clean, means, stds = buffers
        offset = 0
        for (q0, q1, c0, c1), d, saved in zip(plan.directions, ctx.parts, ctx.saved, strict=True):
            rows = slice(offset, offset + q1 - q0)
            offset += q1 - q0
            own = (_rows(clean, q0, q1), _rows(means, q0, q1), _rows(stds, q0, q1))
            out = (
                _rows(queries, q0, q1),
                *(own if plan.with_own else (None, None, None)),
                _rows(clean, c0, c1), _rows(means, c0, c1), _rows(stds, c0, c1),
            )  # fmt: skip
            ctx.blocks.backward(
                d, saved, lse[rows], grad[rows], plan.options.max_block_bytes, plan.dtype, out
            )
        found: list[torch.Tensor | None] = []
        for buffer, tensor in zip(buffers, inputs[:4], strict=True):
            found.append(None if buffer is None else buffer.to(tensor.dtype))
        return (*found, None, None, None, None, None)


def _rows(t: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """Rows ``[start, stop)`` of ``t`` (a view), ``t`` itself when that is all of it."""
    if t is None or (start == 0 and stop == t.shape[0]):
        return t
    return t[start:stop]
