"""The streaming path: blocks of components with a running log-sum-exp, linear memory.

As in flash attention, the forward pass keeps a running maximum and sum per query (and the
softmax-weighted sums of the statistics); no ``(M, N)`` matrix outlives a block. The backward
pass recomputes each block's scores, takes the weights ``g_i exp(z_ij - logsumexp_i)`` and
multiplies them into the factors (``dL = W R``, ``dR = W^T L``); autograd carries ``dL``, ``dR``
back through the factors, so no chain rule is written by hand. When a graph is being built
(``create_graph=True``) the backward pass differentiates the reference path instead: second
derivatives are exact. The Triton path (:mod:`mi_losses.kernels.triton`) runs inside the same
:class:`StreamingLogSumExp` with fused block kernels.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from mi_losses.kernels.factors import Sides, block_rows, directions, exp_normal, scores, sides
from mi_losses.kernels.reference import Result, reference


class Blocks(Protocol):
    """How a path goes through the blocks of one direction (torch ops, or Triton kernels)."""

    def forward(self, s: Sides, budget: int, check: bool) -> Result: ...

    def backward(
        self, s: Sides, log_sum_exp: torch.Tensor, grad: torch.Tensor, budget: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def _columns(s: Sides, budget: int) -> list[tuple[int, int]]:
    """Blocks of components whose ``(m, block)`` scores and weights (about eight matrices)
    fit the budget."""
    return block_rows(s.right.shape[0], 8 * s.left.shape[0] * s.left.element_size(), budget)


class TorchBlocks:
    """Blocks evaluated with torch operations (any device)."""

    def forward(self, s: Sides, budget: int, check: bool) -> Result:
        m, dtype = s.left.shape[0], s.left.dtype
        peak = s.left.new_full((m,), -math.inf)
        total, score, own, constants, count = s.left.new_zeros((5, m))
        excess = s.left.new_full((), -math.inf)
        for c0, c1 in _columns(s, budget):
            block = scores(s.columns(c0, c1), check)
            new = torch.maximum(peak, block.z.amax(-1))
            shift = torch.where(torch.isfinite(new), new, 0.0)
            e = exp_normal(block.z - shift.unsqueeze(-1))
            alpha = (peak - shift).exp()
            total = total * alpha + e.sum(-1)
            score = score * alpha + (e * torch.where(block.valid, block.z, 0.0)).sum(-1)
            own = own * alpha + (e * block.own).sum(-1)
            constants = constants * alpha + (e * block.constants).sum(-1)
            count = count + block.valid.sum(-1).to(dtype)
            peak = new
            if block.excess is not None and block.excess.numel():
                excess = torch.maximum(excess, block.excess.amax())
        has = count > 0
        total = torch.where(has, total, 1.0)
        lse = torch.where(has, torch.where(has, peak, 0.0) + total.log(), -math.inf)
        return Result(
            lse, torch.stack([score / total, own / total, constants / total, count]), excess
        )

    def backward(
        self, s: Sides, log_sum_exp: torch.Tensor, grad: torch.Tensor, budget: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grad_left = torch.zeros_like(s.left)
        grad_right = []
        for c0, c1 in _columns(s, budget):
            block = scores(s.columns(c0, c1), False)
            weights = exp_normal(block.z - log_sum_exp.unsqueeze(-1)) * grad.unsqueeze(-1)
            grad_left.addmm_(weights, s.right[c0:c1])
            grad_right.append(weights.T @ s.left)
        return grad_left, torch.cat(grad_right) if grad_right else torch.zeros_like(s.right)


class StreamingLogSumExp(torch.autograd.Function):
    """``logsumexp_{j in V_i} z_ij`` per query through ``blocks``; the statistics and the
    rounding excess are outputs without gradient."""

    @staticmethod
    def forward(
        queries: torch.Tensor,
        clean: torch.Tensor,
        means: torch.Tensor,
        stds: torch.Tensor,
        query_mask: torch.Tensor,
        component_mask: torch.Tensor,
        plan: Any,
        blocks: Blocks,
        check: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = (queries, clean, means, stds, query_mask, component_mask)
        budget = plan.options.max_block_bytes
        results = [
            blocks.forward(sides(*d, plan.dtype), budget, check)
            for d in directions(inputs, plan.directions, plan.with_own)
        ]
        excess = torch.stack([r.excess for r in results]).amax() if results else None
        return (
            torch.cat([r.log_sum_exp for r in results]),
            torch.cat([r.stats for r in results], 1),
            excess if excess is not None else queries.new_full((), -math.inf),
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        *tensors, plan, blocks, _ = inputs
        ctx.save_for_backward(*tensors, output[0])
        ctx.plan, ctx.blocks = plan, blocks
        ctx.mark_non_differentiable(output[1], output[2])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        *inputs, log_sum_exp = ctx.saved_tensors
        plan, needs = ctx.plan, ctx.needs_input_grad[:4]
        wanted = [t for t, need in zip(inputs[:4], needs, strict=True) if need]
        if torch.is_grad_enabled():
            # A graph is being built (second derivatives): differentiate the reference path.
            exact = reference(tuple(inputs), plan.directions, plan.with_own, plan.dtype, False)
            grads = torch.autograd.grad(
                exact.log_sum_exp, wanted, grad, create_graph=True, allow_unused=True
            )
        else:
            finite = torch.isfinite(log_sum_exp)
            log_sum_exp = torch.where(finite, log_sum_exp, 0.0)
            grad = torch.where(finite, grad, 0.0)
            with torch.enable_grad():
                leaves = [
                    t.detach().requires_grad_(need)
                    for t, need in zip(inputs[:4], needs, strict=True)
                ]
                tensors = (*leaves, *inputs[4:])
                factors, grad_factors, offset = [], [], 0
                parts = directions(tensors, plan.directions, plan.with_own)
                for span, d in zip(plan.directions, parts, strict=True):
                    s = sides(*d, plan.dtype, check=False)
                    m = span[1] - span[0]
                    rows = slice(offset, offset + m)
                    offset += m
                    with torch.no_grad():
                        detached = Sides(*(t if t is None else t.detach() for t in s))  # type: ignore[arg-type]
                        pair = ctx.blocks.backward(
                            detached, log_sum_exp[rows], grad[rows], plan.options.max_block_bytes
                        )
                    factors += [s.left, s.right]
                    grad_factors += pair
                grads = torch.autograd.grad(
                    factors, [t for t in leaves if t.requires_grad], grad_factors, allow_unused=True
                )
        out = iter(grads)
        result = []
        for tensor, need in zip(inputs[:4], needs, strict=True):
            value = next(out) if need else None
            result.append(torch.zeros_like(tensor) if need and value is None else value)
        return (*result, None, None, None, None, None)
