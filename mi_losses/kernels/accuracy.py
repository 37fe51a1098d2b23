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

import torch

from mi_losses.kernels.reference import Result, reference


def accurate(
    run: Callable[[bool], Result],
    inputs: tuple[torch.Tensor, ...],
    directions: tuple[tuple[int, int, int, int], ...],
    with_own: bool,
    check: bool,
) -> Result:
    """``run(check)``; with ``check``, the float64 re-evaluation where the rounding is too large."""
    result = run(check)
    if check and bool(result.excess > 0):
        return reference(inputs, directions, with_own, torch.float64, True, direct=True)
    return result
