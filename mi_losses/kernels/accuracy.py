"""The float64 fallback, a wrapper around any path: run, check the rounding, re-evaluate.

Every path reports the largest rounding error of the expanded squares beyond the tolerance of
docs/math.md#numerics (one reduction, one host synchronisation). Where some valid pair exceeds
it, the call is evaluated again by the reference path in float64, where the pairs that are
still flagged are evaluated from their differences (exact first and second derivatives). That
fallback holds all ``(M, N)`` scores at once; it is only taken for data whose offset or spread
defeats the expansion (near-duplicates far from the batch mean, offsets of ``1e3`` stds and more).
"""

from __future__ import annotations

from typing import Any

import torch

from mi_losses._validation import host_fallback
from mi_losses.kernels.reference import Result, reference


@host_fallback
def accurate(result: Result, inputs: tuple[torch.Tensor, ...], plan: Any) -> Result:
    """``result``, or where its rounding is too large the float64 re-evaluation (``plan`` a
    :class:`~mi_losses.kernels.dispatch.Plan`), cast back to its dtype. Under
    ``torch.compile`` it runs eagerly (a graph break), so compiled results are checked too."""
    if result.excess.item() <= 0:  # NaN (a rounding error not known) is re-evaluated too
        return result
    # Cast once: each input's gradient is summed in float64 and rounded once (a sample that is
    # a query and a component would else add two overflowed halves, inf - inf).
    wide = tuple(t.to(torch.float64) if t.is_floating_point() else t for t in inputs)
    exact = reference(
        wide, plan.directions, with_own=plan.with_own, dtype=torch.float64, check=True,
        with_statistics=plan.with_statistics, direct=True,
    )  # fmt: skip
    stats = None if exact.stats is None else exact.stats.to(plan.dtype)
    lse, num_valid = exact.log_sum_exp.to(plan.dtype), exact.num_valid.to(plan.dtype)
    return Result(lse, num_valid, stats, exact.excess)
