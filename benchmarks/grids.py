"""The benchmark cases: shapes, dtypes and ``torch.compile`` per grid, and their inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table."""

    granularity: str
    batch: int
    seq: int
    emb: int
    dtype: str = "float32"
    compile: bool = False
    autocast: str | None = None  # e.g. "bfloat16": float32 inputs under torch.autocast

    @property
    def dtype_label(self) -> str:
        return f"{self.dtype}+autocast-{self.autocast}" if self.autocast else self.dtype

    @property
    def shape_label(self) -> str:
        return f"{self.granularity} B={self.batch} S={self.seq} E={self.emb}"


def grid_tiny() -> list[Case]:
    """Four small cases, one per granularity and dtype: what the test runs."""
    return [
        Case("sequence", 4, 8, 16),
        Case("sequence", 4, 8, 16, dtype="bfloat16"),
        Case("token", 4, 8, 16),
        Case("token", 4, 8, 16, dtype="bfloat16"),
    ]


def grid_default(device: str) -> list[Case]:
    """The table of the README (CUDA adds autocast rows and a larger token case)."""
    cases = [
        Case("sequence", 16, 64, 256),
        Case("sequence", 64, 128, 768),
        Case("sequence", 64, 128, 768, dtype="bfloat16"),
        Case("sequence", 64, 128, 768, compile=True),
        Case("sequence", 32, 512, 1024),
        Case("sequence", 128, 128, 768),
        Case("token", 4, 64, 256),
        Case("token", 8, 128, 768),
        Case("token", 8, 256, 768),
        Case("token", 8, 256, 768, dtype="bfloat16"),
        Case("token", 8, 256, 768, compile=True),
        Case("token", 8, 1024, 4096),
        Case("token", 8, 1024, 4096, dtype="bfloat16"),
        Case("token", 16, 2048, 1024),
    ]
    if device == "cuda":
        cases += [
            Case("sequence", 64, 128, 768, autocast="bfloat16"),
            Case("token", 8, 256, 768, autocast="bfloat16"),
            Case("token", 8, 1024, 4096, autocast="bfloat16"),
            Case("token", 8, 1024, 4096, compile=True),
            Case("token", 16, 2048, 4096),
            Case("token", 16, 2048, 4096, autocast="bfloat16"),
        ]
    return cases


GRIDS: dict[str, Callable[[str], list[Case]]] = {
    "tiny": lambda device: grid_tiny(),
    "default": grid_default,
}


def make_inputs(
    case: Case, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leaf tensors ``(means, stds, noise_mask, clean, noisy)`` like a noise layer produces.

    Embeddings have a common offset (real token embeddings are anisotropic), the noise has
    ``sigma`` in ``[0.3, 1)``, and every sequence has between 0 and ``S / 4`` padding positions
    at its end where the noise mask is false (and the noisy embedding equals the clean one).
    """
    generator = torch.Generator().manual_seed(seed)
    b, s, e = case.batch, case.seq, case.emb
    offset = 2.0 * torch.randn(e, generator=generator)
    clean = torch.randn(b, s, e, generator=generator) + offset
    means = 0.1 * torch.randn(b, s, e, generator=generator)
    stds = 0.3 + 0.7 * torch.rand(b, s, e, generator=generator)
    padding = torch.randint(0, s // 4 + 1, (b,), generator=generator)
    mask = torch.arange(s).unsqueeze(0) < (s - padding).unsqueeze(1)
    noisy = clean + means + stds * torch.randn(b, s, e, generator=generator)
    noisy = torch.where(mask.unsqueeze(-1), noisy, clean)
    dtype = DTYPES[case.dtype]
    leaves = [
        t.to(device=device, dtype=dtype).requires_grad_() for t in (means, stds, clean, noisy)
    ]
    return leaves[0], leaves[1], mask.to(device), leaves[2], leaves[3]


def active_counts(case: Case, mask: torch.Tensor) -> tuple[int, int]:
    """``(M, N)``: number of queries and of components the estimator compares."""
    half = case.batch // 2
    if case.granularity == "sequence":
        return half, half
    return int(mask[:half].sum()), int(mask[half:].sum())
