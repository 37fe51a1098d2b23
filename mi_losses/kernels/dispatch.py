"""The kernel's entry: a plan per call, the choice of path, the results per query."""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import torch

from mi_losses.kernels.accuracy import accurate
from mi_losses.kernels.reference import Result, reference
from mi_losses.kernels.streaming import Blocks, StreamingLogSumExp, TorchBlocks
from mi_losses.options import KernelOptions


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to compute, fixed for one call (Python values only).

    Attributes:
        directions: ``(q0, q1, c0, c1)`` per direction: queries are rows ``[q0, q1)`` of the
            query tensors, components rows ``[c0, c1)`` of the component tensors.
        with_own: queries carry their own term (mutual information); rows ``[q0, q1)`` of the
            component tensors are then the queries' own clean embeddings, means and stds.
        dtype: compute dtype.
        options: the path, the block budget and the rounding check.
        with_statistics: compute the softmax-weighted statistics (the components).
    """

    directions: tuple[tuple[int, int, int, int], ...]
    with_own: bool
    dtype: torch.dtype
    options: KernelOptions
    with_statistics: bool = True


def make_plan(
    directions: list[tuple[int, int, int, int]],
    *,
    with_own: bool,
    dtype: torch.dtype,
    options: KernelOptions,
    with_statistics: bool = True,
) -> Plan:
    """The kernel's plan for one call."""
    return Plan(tuple(directions), with_own, dtype, options, with_statistics)


def transformed(tensors: tuple[torch.Tensor, ...]) -> bool:
    """Whether a ``torch.func`` transform wraps any of ``tensors`` (not asked under compile)."""
    if torch.compiler.is_compiling():
        return False
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def triton_unavailable(device: torch.device) -> str | None:
    """Why the Triton path cannot run on ``device`` (``None`` when it can)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"its kernels need CUDA tensors (got {device.type}; TRITON_INTERPRET=1 runs them on the CPU)"
    return None


def choose(plan: Plan, tensors: tuple[torch.Tensor, ...]) -> str:
    """The path of one call: ``"reference"``, ``"streaming"`` or ``"triton"``.

    ``"auto"`` takes the reference path under ``torch.func`` transforms and
    ``torch.compile`` (autograd all through); else Triton on CUDA when it imports; else
    streaming (one block when all scores fit the budget; its written-out first derivatives
    make fewer and cheaper passes than autograd through the factors). An explicit choice that
    cannot run raises ``ValueError``.
    """
    kernel, device = plan.options.kernel, tensors[0].device
    if kernel == "auto":
        if transformed(tensors) or torch.compiler.is_compiling():
            return "reference"
        if device.type == "cuda" and triton_unavailable(device) is None:
            return "triton"
        return "streaming"
    if kernel != "reference" and transformed(tensors):
        raise ValueError(
            f"kernel={kernel!r} cannot run under torch.func transforms (its backward pass is a "
            "custom autograd.Function); use kernel='reference' or 'auto'"
        )
    if kernel == "triton" and (why := triton_unavailable(device)) is not None:
        raise ValueError(f"kernel='triton' cannot run: {why}")
    return kernel


def _distinct(tensors: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """``tensors``, under ``torch.compile`` each repeated one as a view (dynamo traces an
    ``autograd.Function`` only with distinct tensor arguments)."""
    if not torch.compiler.is_compiling():
        return list(tensors)
    return [t.view_as(t) if any(t is u for u in tensors[:i]) else t for i, t in enumerate(tensors)]


def stream(
    queries: torch.Tensor,
    clean: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    query_mask: torch.Tensor,
    component_mask: torch.Tensor,
    plan: Plan,
) -> Result:
    """Run the kernel; inputs ``(rows, S, E)`` in any float dtype, masks ``(rows, S)`` bool."""
    inputs = (queries, clean, means, stds, query_mask, component_mask)
    path = choose(plan, inputs)
    check = plan.options.accuracy_check
    if path == "reference":
        result = reference(
            inputs, plan.directions, with_own=plan.with_own, dtype=plan.dtype, check=check,
            with_statistics=plan.with_statistics,
        )  # fmt: skip
    else:
        if path == "triton":
            from mi_losses.kernels.triton import TritonBlocks

            blocks: Blocks = TritonBlocks()
        else:
            blocks = TorchBlocks()
        lse, count, *stats, excess = StreamingLogSumExp.apply(
            *_distinct(inputs), plan, blocks, check
        )  # type: ignore[no-untyped-call]
        result = Result(lse, count, stats[0] if stats else None, excess)
    return accurate(result, inputs, plan) if check else result
