"""Random inputs and mask patterns shared by the tests."""

from __future__ import annotations

import torch
from torch import Tensor

MASK_PATTERNS = (
    "none",  # noise_mask=None
    "full",  # all true
    "random",  # Bernoulli(0.6)
    "int01",  # random, as an int64 0/1 tensor
    "empty_rows",  # random, with one fully masked row in each half
    "disjoint",  # first half active only at even s, second half only at odd s
    "one_hot",  # one active position per row: in sequence granularity V_i is a strict subset
    "first_half_empty",  # no query of the first half is active
    "all_empty",  # nothing is active
)


def make_mask(pattern: str, b: int, s: int, seed: int = 0) -> Tensor | None:
    """A ``(b, s)`` noise mask of the named pattern (``None`` for ``"none"``)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    half = b // 2
    if pattern == "none":
        return None
    if pattern == "full":
        return torch.ones(b, s, dtype=torch.bool)
    mask = torch.rand(b, s, generator=g) < 0.6
    if pattern == "random":
        return mask
    if pattern == "int01":
        return mask.long()
    if pattern == "empty_rows":
        mask[0] = False
        mask[half] = False
        return mask
    if pattern == "disjoint":
        even = torch.arange(s) % 2 == 0
        mask = torch.zeros(b, s, dtype=torch.bool)
        mask[:half] = even
        mask[half:] = ~even
        return mask
    if pattern == "one_hot":
        position = torch.randint(0, s, (b,), generator=g)
        return torch.nn.functional.one_hot(position, s).bool()
    if pattern == "first_half_empty":
        mask[:half] = False
        mask[half:, 0] = True
        return mask
    if pattern == "all_empty":
        return torch.zeros(b, s, dtype=torch.bool)
    raise ValueError(pattern)


def make_inputs(
    b: int,
    s: int,
    e: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    clean_scale: float = 0.5,
    offset: float = 0.0,
    mean_scale: float = 0.3,
    std_range: tuple[float, float] = (0.5, 1.5),
    requires_grad: bool = False,
) -> dict[str, Tensor]:
    """The four ``(b, s, e)`` tensors of ``mutual_information_sub_batch``, by argument name.

    ``clean = offset + clean_scale * randn``, ``means = mean_scale * randn``,
    ``stds ~ U(std_range)``, ``noisy = clean + means + stds * randn``.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (b, s, e)
    clean = offset + clean_scale * torch.randn(shape, generator=g, dtype=torch.float64)
    means = mean_scale * torch.randn(shape, generator=g, dtype=torch.float64)
    low, high = std_range
    stds = low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)
    noisy = clean + means + stds * torch.randn(shape, generator=g, dtype=torch.float64)
    tensors = {
        "means_tensor": means,
        "stds_tensor": stds,
        "clean_input_embeddings": clean,
        "noisy_input_embeddings": noisy,
    }
    return {k: v.to(dtype).detach().requires_grad_(requires_grad) for k, v in tensors.items()}


def make_entropy_inputs(
    m: int,
    n: int,
    s: int,
    e: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    clean_scale: float = 0.5,
    offset: float = 0.0,
    std_range: tuple[float, float] = (0.5, 1.5),
    requires_grad: bool = False,
) -> dict[str, Tensor]:
    """Arguments of ``gaussian_mixture_entropy``: ``n`` components, ``m`` queries."""
    g = torch.Generator().manual_seed(seed)
    clean = offset + clean_scale * torch.randn((n, s, e), generator=g, dtype=torch.float64)
    means = 0.3 * torch.randn((n, s, e), generator=g, dtype=torch.float64)
    low, high = std_range
    stds = low + (high - low) * torch.rand((n, s, e), generator=g, dtype=torch.float64)
    transformed = offset + torch.randn((m, s, e), generator=g, dtype=torch.float64)
    tensors = {
        "clean_embeddings": clean,
        "transformed_embeddings": transformed,
        "means": means,
        "stds": stds,
    }
    return {k: v.to(dtype).detach().requires_grad_(requires_grad) for k, v in tensors.items()}


MI_ARG_ORDER = (
    "means_tensor",
    "stds_tensor",
    "clean_input_embeddings",
    "noisy_input_embeddings",
)
ENTROPY_ARG_ORDER = ("clean_embeddings", "transformed_embeddings", "means", "stds")


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    """Tolerances of an implementation result against the float64 reference."""
    if dtype == torch.float64:
        return {"rtol": 1e-9, "atol": 1e-10}
    if dtype == torch.float32:
        return {"rtol": 1e-4, "atol": 1e-4}
    raise ValueError(dtype)


def gaussian_channel_inputs(
    b: int, s: int, e: int, signal: float, noise: float, seed: int
) -> dict[str, Tensor]:
    """``Y = X + N``, ``X ~ N(0, signal^2)``, ``N ~ N(0, noise^2)`` elementwise; means 0.

    The four ``(b, s, e)`` float64 tensors of ``mutual_information_sub_batch``, by argument name.
    """
    g = torch.Generator().manual_seed(seed)
    clean = signal * torch.randn(b, s, e, generator=g, dtype=torch.float64)
    stds = torch.full((b, s, e), noise, dtype=torch.float64)
    noisy = clean + stds * torch.randn(b, s, e, generator=g, dtype=torch.float64)
    return {
        "means_tensor": torch.zeros_like(clean),
        "stds_tensor": stds,
        "clean_input_embeddings": clean,
        "noisy_input_embeddings": noisy,
    }


ENTROPY_VOCABULARY = {
    "means": "means_tensor",
    "stds": "stds_tensor",
    "mask": "noise_mask",
    "clean_embeddings": "clean_input_embeddings",
    "transformed_embeddings": "noisy_input_embeddings",
}
"""The reference ``gaussian_mixture_entropy``'s argument names -> the library vocabulary."""


def entropy_estimate(
    clean_embeddings: Tensor,
    transformed_embeddings: Tensor,
    means: Tensor,
    stds: Tensor,
    mask: Tensor | None = None,
    **options: object,
) -> object:
    """``gaussian_mixture_entropy_estimate`` called with the reference function's arguments."""
    from mi_losses.functional import gaussian_mixture_entropy_estimate

    return gaussian_mixture_entropy_estimate(
        means, stds, mask, clean_embeddings, transformed_embeddings, **options
    )
