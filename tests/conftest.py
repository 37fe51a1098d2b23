"""Shared test helpers."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """A small float64 batch of the four ``(B, S, E)`` tensors with a padded noise mask."""
    generator = torch.Generator().manual_seed(0)
    b, s, e = 6, 5, 3
    clean = torch.randn(b, s, e, generator=generator, dtype=torch.float64)
    means = 0.1 * torch.randn(b, s, e, generator=generator, dtype=torch.float64)
    stds = 0.5 + torch.rand(b, s, e, generator=generator, dtype=torch.float64)
    noisy = clean + means + stds * torch.randn(b, s, e, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([5, 3, 4, 2, 5, 1])
    noise_mask = torch.arange(s)[None] < lengths[:, None]
    return {
        "clean": clean,
        "means": means,
        "stds": stds,
        "noisy": noisy,
        "noise_mask": noise_mask,
    }
