"""The float64 fallback, a wrapper around any path: run, check the rounding, re-evaluate.

Every path reports the largest rounding error of the expanded squares beyond the tolerance of
docs/math.md#numerics (one reduction, one host synchronisation). Where some valid pair exceeds
it, the call is evaluated again by the reference path in float64, where the pairs that are
still flagged are evaluated from their differences (exact first and second derivatives). That
fallback holds all ``(M, N)`` scores at once; it is only taken for data whose offset or spread
defeats the expansion (near-duplicates far from the batch mean, offsets of ``1e3`` stds and more).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mi_losses.kernels.reference import Result, reference


def accurate(
    run: Callable[[bool], Result], inputs: tuple[torch.Tensor, ...], plan: Any, check: bool
) -> Result:
    """``run(check)``; with ``check``, the float64 re-evaluation where the rounding is too
    large (``plan`` a :class:`~mi_losses.kernels.dispatch.Plan`), cast back to its dtype."""
    result = run(check)
    if not (check and bool(result.excess > 0)):
        return result
    exact = reference(
        inputs, plan.directions, plan.with_own, torch.float64, True, plan.with_statistics, True
    )
    stats = None if exact.stats is None else exact.stats.to(plan.dtype)
    lse, num_valid = exact.log_sum_exp.to(plan.dtype), exact.num_valid.to(plan.dtype)
    return Result(lse, num_valid, stats, exact.excess)
