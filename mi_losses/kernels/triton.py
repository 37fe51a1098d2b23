# mypy: disable-error-code="no-untyped-def,untyped-decorator,import-untyped"
"""The Triton path: the streaming blocks as fused kernels (CUDA; ``TRITON_INTERPRET=1`` on CPU).

Flash-attention style. The forward kernel gives each program ``BLOCK_M`` queries and walks
over all components in tiles of ``BLOCK_N``: the scores are dots of the factor rows
(:mod:`mi_losses.kernels.factors`) over ``BLOCK_K`` columns at a time, the pair masks and
constants dots over the positions; then the running maximum and sum, the softmax-weighted
statistics and the rounding check, all in registers. One launch per direction writes the
per-query ``logsumexp``, statistics and largest rounding excess. The backward kernel
recomputes a block of scores and writes the weights ``g_i exp(z_ij - logsumexp_i)``; two matrix
products per block (``dL = W R``, ``dR = W^T L``) give the factors' gradients, and the written-out
chain rule of :func:`mi_losses.kernels.chain.add_grads` finishes it. Dots run in the factors'
dtype (float32 for float32, bfloat16 and float16 inputs) with IEEE precision (no TF32).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from mi_losses.kernels.chain import Grads, Targets, add_grads
from mi_losses.kernels.directions import Direction, block_rows
from mi_losses.kernels.factors import Sides, sides
from mi_losses.kernels.reference import Result
from mi_losses.kernels.scores import TOLERANCES
from mi_losses.kernels.streaming import Saved, finite_log_sum_exp
from mi_losses.options import KernelOptions

BLOCK_M, BLOCK_N, BLOCK_K = 32, 32, 32


@triton.jit
def _scores(
    left,
    right,
    a,
    q,
    b,
    p,
    h,
    rows,
    cols,
    row_ok,
    col_ok,
    f,
    s,
    HAS_OWN: tl.constexpr,
    CHECK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One tile of scores ``L R^T`` and of the pair sums over positions ``a b^T``, ``a p^T``,
    ``q b^T`` and ``a h^T`` (the last two only when asked)."""
    dtype = left.dtype.element_ty
    ks = tl.arange(0, BLOCK_K)
    z = tl.zeros([BLOCK_M, BLOCK_N], dtype=dtype)
    for k0 in range(0, f, BLOCK_K):
        k_ok = (k0 + ks) < f
        lt = tl.load(
            left + rows[:, None] * f + k0 + ks[None, :], row_ok[:, None] & k_ok[None, :], 0.0
        )
        rt = tl.load(
            right + cols[:, None] * f + k0 + ks[None, :], col_ok[:, None] & k_ok[None, :], 0.0
        )
        z += tl.dot(lt, tl.trans(rt), input_precision="ieee", out_dtype=dtype)
    count = tl.zeros([BLOCK_M, BLOCK_N], dtype=dtype)
    constants = tl.zeros([BLOCK_M, BLOCK_N], dtype=dtype)
    own = tl.zeros([BLOCK_M, BLOCK_N], dtype=dtype)
    halves = tl.zeros([BLOCK_M, BLOCK_N], dtype=dtype)
    for s0 in range(0, s, BLOCK_K):
        s_ok = (s0 + ks) < s
        query_at = rows[:, None] * s + s0 + ks[None, :]
        query_ok = row_ok[:, None] & s_ok[None, :]
        comp_at = cols[:, None] * s + s0 + ks[None, :]
        comp_ok = col_ok[:, None] & s_ok[None, :]
        at = tl.load(a + query_at, query_ok, 0.0)
        bt = tl.trans(tl.load(b + comp_at, comp_ok, 0.0))
        count += tl.dot(at, bt, input_precision="ieee", out_dtype=dtype)
        pt = tl.trans(tl.load(p + comp_at, comp_ok, 0.0))
        constants += tl.dot(at, pt, input_precision="ieee", out_dtype=dtype)
        if HAS_OWN:
            qt = tl.load(q + query_at, query_ok, 0.0)
            own += tl.dot(qt, bt, input_precision="ieee", out_dtype=dtype)
        if CHECK:
            ht = tl.trans(tl.load(h + comp_at, comp_ok, 0.0))
            halves += tl.dot(at, ht, input_precision="ieee", out_dtype=dtype)
    valid = (count > 0) & row_ok[:, None] & col_ok[None, :]
    z = tl.where(valid, z, float("-inf"))
    return z, valid, constants, own, halves


@triton.jit
def _forward_kernel(
    left,
    right,
    a,
    q,
    b,
    p,
    h,
    squares,
    largest,
    out_lse,
    out_stats,
    out_excess,
    m,
    n,
    f,
    s,
    eps,
    relative,
    absolute,
    HAS_OWN: tl.constexpr,
    CHECK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    dtype = left.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < m
    peak = tl.full([BLOCK_M], float("-inf"), dtype)
    total = tl.zeros([BLOCK_M], dtype)
    score = tl.zeros([BLOCK_M], dtype)
    own_sum = tl.zeros([BLOCK_M], dtype)
    constant_sum = tl.zeros([BLOCK_M], dtype)
    count = tl.zeros([BLOCK_M], dtype)
    excess = tl.full([BLOCK_M], float("-inf"), dtype)
    if CHECK:
        row_squares = tl.load(squares + rows, row_ok, 0.0)
    for n0 in range(0, n, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n
        z, valid, constants, own, halves = _scores(
            left, right, a, q, b, p, h, rows, cols, row_ok, col_ok, f, s,
            HAS_OWN, CHECK, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        new = tl.maximum(peak, tl.max(z, 1))
        shift = tl.where(new > float("-inf"), new, 0.0)
        e = tl.where(valid, tl.exp(z - shift[:, None]), 0.0)
        alpha = tl.exp(peak - shift)
        total = total * alpha + tl.sum(e, 1)
        score = score * alpha + tl.sum(e * tl.where(valid, z, 0.0), 1)
        own_sum = own_sum * alpha + tl.sum(e * own, 1)
        constant_sum = constant_sum * alpha + tl.sum(e * constants, 1)
        count += tl.sum(valid.to(dtype), 1)
        peak = new
        if CHECK:
            col_largest = tl.load(largest + cols, col_ok, 0.0)
            magnitude = 0.5 * (row_squares[:, None] * col_largest[None, :] + halves)
            distance = tl.abs(tl.where(valid, z, 0.0) + constants + own)
            error = eps * magnitude - relative * distance - absolute
            error = tl.where(error == error, error, float("inf"))
            excess = tl.maximum(excess, tl.max(tl.where(valid, error, float("-inf")), 1))
    has = count > 0
    total = tl.where(has, total, 1.0)
    lse = tl.where(has, tl.where(has, peak, 0.0) + tl.log(total), float("-inf"))
    tl.store(out_lse + rows, lse, row_ok)
    tl.store(out_stats + rows, score / total, row_ok)
    tl.store(out_stats + m + rows, own_sum / total, row_ok)
    tl.store(out_stats + 2 * m + rows, constant_sum / total, row_ok)
    tl.store(out_stats + 3 * m + rows, count, row_ok)
    tl.store(out_excess + rows, excess, row_ok)


@triton.jit
def _weights_kernel(
    left,
    right,
    a,
    b,
    lse,
    grad,
    out,
    m,
    n,
    f,
    s,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < m, cols < n
    z, valid, _, _, _ = _scores(
        left, right, a, a, b, b, b, rows, cols, row_ok, col_ok, f, s,
        False, False, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    shift = tl.load(lse + rows, row_ok, 0.0)
    g = tl.load(grad + rows, row_ok, 0.0)
    weights = tl.where(valid, tl.exp(z - shift[:, None]), 0.0) * g[:, None]
    tl.store(out + rows[:, None] * n + cols[None, :], weights, row_ok[:, None] & col_ok[None, :])


class _Flat(NamedTuple):
    """The factors as the kernels read them: row-major ``L``, ``R`` and the per-position sums."""

    left: torch.Tensor
    right: torch.Tensor
    a: torch.Tensor
    q: torch.Tensor  # a stands in for q without an own term
    b: torch.Tensor
    p: torch.Tensor
    h: torch.Tensor
    squares: torch.Tensor
    largest: torch.Tensor


def _flat(s: Sides) -> _Flat:
    q, c = s.queries, s.components

    def given(t: torch.Tensor | None) -> torch.Tensor:  # a stands in for what is not read
        return q.a if t is None else t

    half = None if c.h2 is None else 0.5 * c.h2  # h, the kernels' halves

    tensors = (
        s.left, s.right, q.a, given(q.q), c.b, given(c.p), given(half), given(q.squares),
        given(c.largest),
    )  # fmt: skip
    return _Flat(*(t.contiguous() for t in tensors))


class TritonBlocks:
    """The blocks of :class:`~mi_losses.kernels.streaming.StreamingLogSumExp` as Triton kernels."""

    def forward(
        self, d: Direction, dtype: torch.dtype, options: KernelOptions, *, check: bool,
        with_statistics: bool,
    ) -> tuple[Result, Saved]:  # fmt: skip
        s = sides(*d, dtype, check=check)
        return self._forward(s, check, with_statistics), Saved(s.frame, None)  # made again later

    def _forward(self, s: Sides, check: bool, with_statistics: bool) -> Result:
        has_own = s.queries.q is not None
        f_ = _flat(s)
        m, n, f = f_.left.shape[0], f_.right.shape[0], f_.left.shape[1]
        dtype = f_.left.dtype
        lse = f_.left.new_empty(m)
        stats = f_.left.new_empty((4, m))
        excess = f_.left.new_full((m,), -math.inf)
        relative, absolute = TOLERANCES[dtype]
        if m:
            _forward_kernel[(triton.cdiv(m, BLOCK_M),)](
                f_.left, f_.right, f_.a, f_.q, f_.b, f_.p, f_.h,
                f_.squares, f_.largest,
                lse, stats, excess, m, n, f, f_.a.shape[1],
                torch.finfo(dtype).eps, relative, absolute,
                HAS_OWN=has_own, CHECK=check,
                BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
            )  # fmt: skip
        largest = excess.amax() if m else f_.left.new_full((), -math.inf)
        return Result(lse, stats[3], stats[:3] if with_statistics else None, largest)

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
        s = sides(*d, dtype, check=False, frame_=saved.frame)
        finite = finite_log_sum_exp(log_sum_exp)
        add_grads(s, self._grads(s, finite, grad, options.max_block_bytes), out)

    def _grads(self, s: Sides, log_sum_exp: torch.Tensor, grad: torch.Tensor, budget: int) -> Grads:
        f_ = _flat(s)
        m, n, f = f_.left.shape[0], f_.right.shape[0], f_.left.shape[1]
        grad_left = torch.zeros_like(f_.left)
        grad_right = torch.zeros_like(f_.right)
        lse, grad = log_sum_exp.contiguous(), grad.to(f_.left.dtype).contiguous()
        for c0, c1 in block_rows(n, 4 * m * f_.left.element_size(), budget):
            weights = f_.left.new_empty((m, c1 - c0))
            grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(c1 - c0, BLOCK_N))
            if m:
                _weights_kernel[grid](
                    f_.left, f_.right[c0:c1], f_.a, f_.b[c0:c1], lse, grad, weights,
                    m, c1 - c0, f, f_.a.shape[1],
                    BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                )  # fmt: skip
            grad_left.addmm_(weights, f_.right[c0:c1])
            grad_right[c0:c1] = weights.T @ f_.left
        # L = [y'^2, y', a, q], R = [wn, wc, k, -b]: split the columns back into the factors.
        width, positions = s.queries.y.shape[1], s.queries.a.shape[1]
        d_y2, d_y, _, d_q = torch.split(grad_left, [width, width, positions, positions], 1)
        d_wn, d_wc, d_k, _ = torch.split(grad_right, [width, width, positions, positions], 1)
        minus_d_q = -d_q if s.queries.q is not None else None  # Grads holds minus d q
        return Grads(d_y, -2.0 * d_y2, minus_d_q, d_wn, d_wc, d_k)
