"""The streaming pairwise kernel: per-query log-sum-exp of pair scores in blocks, linear memory.

Every mixture estimator reduces, for each query ``i``, the pair scores ``z_ij`` (see
:mod:`mi_losses.functional._pair_terms`) over its valid components ``V_i`` with a
``logsumexp``. This module computes that reduction in blocks of queries and components, as
flash attention does: the forward pass keeps a running maximum and sum per query (and the
softmax-weighted sums the component losses need); the backward pass prepares each block's
factors again from the saved inputs and takes its scores from the forward pass when all of
them fit in the budget (else recomputes them), then the weights from the per-query
``logsumexp``. No ``(M, N)`` matrix outlives a block unless all of them fit in half the budget;
block sizes come from the budget. See :mod:`mi_losses.functional._stream_passes` for the two
ways through the pairs.

The backward pass is made of differentiable torch operations and recomputes the
``logsumexp`` through this same function when a graph is being built, so second (and higher)
derivatives are exact, and ``torch.func`` transforms apply.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch

from mi_losses.functional._stream_passes import Spec, backward_pass, forward_pass


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to compute, fixed for one call (Python values only).

    Attributes:
        directions: ``(q0, q1, c0, c1)`` per direction: queries are rows ``[q0, q1)`` of the
            query tensors, components rows ``[c0, c1)`` of the component tensors.
        with_own: queries carry their own term (mutual information); rows ``[q0, q1)`` of the
            component tensors are then the queries' own clean embeddings, means and stds.
        max_block_bytes: memory budget of one block.
        dtype: compute dtype.
        accuracy_check: check the rounding of the expanded squares; where it is too large, redo
            the pass in float64 with the flagged pairs evaluated from their differences.
        direct: that float64 pass (set by the forward pass, read by the backward pass).
        outcome: what the forward pass decided (filled by it, read by ``setup_context``).
    """

    directions: tuple[tuple[int, int, int, int], ...]
    with_own: bool
    max_block_bytes: int
    dtype: torch.dtype
    accuracy_check: bool
    direct: bool = False
    outcome: dict[str, bool] = dataclasses.field(default_factory=dict, compare=False)


class Stream(NamedTuple):
    """Per-query results of the kernel (all directions concatenated).

    Attributes:
        log_sum_exp: ``logsumexp_{j in V_i} z_ij``, ``-inf`` where ``V_i`` is empty; with grad.
        weighted_score: ``sum_j w_ij z_ij`` (``w`` the softmax over ``V_i``), detached.
        weighted_own: ``sum_j w_ij sum_{s in P(i,j)} q_is``, detached.
        weighted_constants: ``sum_j w_ij sum_{s in P(i,j)} p_js``, detached.
        num_valid: ``|V_i|`` in the compute dtype, detached.
    """

    log_sum_exp: torch.Tensor
    weighted_score: torch.Tensor
    weighted_own: torch.Tensor
    weighted_constants: torch.Tensor
    num_valid: torch.Tensor


def stream(
    queries: torch.Tensor,
    clean: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    query_mask: torch.Tensor,
    component_mask: torch.Tensor,
    plan: Plan,
) -> Stream:
    """Run the kernel; inputs ``(rows, S, E)`` in any float dtype, masks ``(rows, S)`` bool."""
    if plan.accuracy_check and torch.compiler.is_compiling():
        plan = dataclasses.replace(plan, accuracy_check=False)
    log_sum_exp, stats, *_ = _StreamingLogSumExp.apply(  # type: ignore[no-untyped-call]
        queries, clean, means, stds, query_mask, component_mask, plan
    )
    log_sum_exp = log_sum_exp.to(plan.dtype)
    stats = stats.to(plan.dtype)
    return Stream(log_sum_exp, stats[0], stats[1], stats[2], stats[3])


class _StreamingLogSumExp(torch.autograd.Function):
    """``logsumexp_{j in V_i} z_ij`` per query, with a backward made of differentiable ops.

    The second output (statistics for the component losses) is not differentiable. The dtype
    of the first output is the dtype the pass ran in (float64 after an accuracy fallback); the
    backward pass runs in that dtype too.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        queries: torch.Tensor,
        clean: torch.Tensor,
        means: torch.Tensor,
        stds: torch.Tensor,
        query_mask: torch.Tensor,
        component_mask: torch.Tensor,
        plan: Plan,
    ) -> tuple[torch.Tensor, ...]:
        inputs = (queries, clean, means, stds, query_mask, component_mask)
        spec = Spec(plan.directions, plan.with_own, plan.max_block_bytes, plan.direct)
        check = plan.accuracy_check and not plan.direct
        log_sum_exp, stats, excess, cache = forward_pass(inputs, spec, plan.dtype, check)
        if check and bool(excess > 0):
            # Rounding beyond the tolerance somewhere: again in float64, where flagged pairs are
            # evaluated from their differences.
            spec = spec._replace(direct=True)
            log_sum_exp, stats, _, cache = forward_pass(inputs, spec, torch.float64, False)
            plan.outcome["direct"] = True
        return (log_sum_exp, stats, *cache)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        *tensors, plan = inputs
        log_sum_exp, stats, *cache = output
        ctx.save_for_backward(*tensors, log_sum_exp, *cache)
        ctx.plan = dataclasses.replace(
            plan, direct=plan.direct or plan.outcome.pop("direct", False)
        )
        ctx.mark_non_differentiable(stats, *cache)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, *_: torch.Tensor) -> tuple[Any, ...]:
        saved = ctx.saved_tensors
        inputs, log_sum_exp, cache = saved[:6], saved[6], list(saved[7:])
        plan = dataclasses.replace(ctx.plan, dtype=log_sum_exp.dtype, accuracy_check=False)
        if torch.is_grad_enabled():
            # Second derivatives: the weights exp(z - logsumexp) depend on the inputs through
            # the logsumexp too, so recompute it with a graph (and every block with it).
            log_sum_exp = _StreamingLogSumExp.apply(*inputs, plan)[0]  # type: ignore[no-untyped-call]
            cache = []
        spec = Spec(plan.directions, plan.with_own, plan.max_block_bytes, plan.direct)
        needs = ctx.needs_input_grad
        grad_queries, grad_centres, grad_stds = backward_pass(
            tuple(inputs), log_sum_exp, grad.to(log_sum_exp.dtype), spec, any(needs[1:4]), cache
        )
        queries, clean, means, stds = inputs[:4]
        return (
            grad_queries.to(queries.dtype) if needs[0] else None,
            grad_centres.to(clean.dtype) if needs[1] else None,
            grad_centres.to(means.dtype) if needs[2] else None,
            grad_stds.to(stds.dtype) if needs[3] else None,
            None,
            None,
            None,
        )
