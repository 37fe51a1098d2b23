"""The speed floor: the matrix products the library's kernel cannot avoid, timed alone.

Two forward products ``(M, K) x (K, N)`` and, in the backward pass, two products of the
``(M, N)`` gradient with each forward operand: ``M = N = B / 2`` and ``K = S E`` at sequence
granularity, ``M = N = B S / 2`` and ``K = E`` at token granularity (padding included).
"""

from __future__ import annotations

import torch

from benchmarks.grids import DTYPES, Case


def floor_operands(
    case: Case, device: torch.device, dtype: torch.dtype | None = None
) -> list[torch.Tensor]:
    """Random operands of the six products: ``(A1, B1, A2, B2, G)``, in ``dtype`` (default:
    the kernel's compute dtype for the case's inputs)."""
    half = case.batch // 2
    if case.granularity == "sequence":
        m = n = half
        k = case.seq * case.emb
    else:
        m = n = half * case.seq
        k = case.emb
    # The kernel multiplies in its compute dtype: float32 or better (half precision promoted).
    dtype = dtype or torch.promote_types(DTYPES[case.dtype], torch.float32)
    generator = torch.Generator().manual_seed(1)
    shapes = [(m, k), (n, k), (m, k), (n, k), (m, n)]
    return [
        torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for shape in shapes
    ]


def floor_step(operands: list[torch.Tensor]) -> list[torch.Tensor]:
    """Forward ``A1 B1^T``, ``A2 B2^T`` and the four backward products ``G B``, ``G^T A``."""
    a1, b1, a2, b2, g = operands
    return [a1 @ b1.T, a2 @ b2.T, g @ b1, g.T @ a1, g @ b2, g.T @ a2]
