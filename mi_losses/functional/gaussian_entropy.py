"""Negative differential entropy of the per-element Gaussian noise."""

from __future__ import annotations

import math

import torch

from mi_losses._validation import (
    as_bool_mask,
    check_bool,
    check_floating,
    check_positive_at_active,
    compute_dtype,
)

__all__ = ["gaussian_entropy_log_loss"]

_HALF_LOG_TWO_PI_E = 0.5 * math.log(2.0 * math.pi * math.e)


def gaussian_entropy_log_loss(
    stds: torch.Tensor,
    noise_mask: torch.Tensor | None = None,
    *,
    eps: float = 1e-12,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Minus the mean per-element differential entropy of the noise ``N(0, sigma^2)``, in nats.

    $$\operatorname{mean}_{\text{active}} \big(-\log(\sigma + \epsilon)\big) - \tfrac12 \log(2\pi e)$$

    Minimising it raises the noise's entropy (``0.5 log(2 pi e sigma^2)`` per element).

    Args:
        stds: ``sigma > 0``, ``(B, S, E)`` (any shape ``(..., E)`` works).
        noise_mask: active positions, ``stds.shape[:-1]`` (``(B, S)``), bool or 0/1;
            ``None`` means all.
        eps: added to ``sigma`` inside the log.
        validate_args: check that ``stds`` is positive and the mask is 0/1.

    Returns:
        Scalar in nats, in the input dtype; ``0`` (with a zero gradient) when nothing is active.

    Example:
        >>> round(gaussian_entropy_log_loss(torch.ones(2, 3, 4)).item(), 4)
        -1.4189
    """
    check_floating("stds", stds)
    if stds.ndim < 1:
        raise ValueError("stds must have at least 1 dimension (..., E), got a scalar")
    mask = as_bool_mask(
        "noise_mask", noise_mask, stds.shape[:-1], stds.device, validate_values=validate_args
    )
    check_bool("", "validate_args", validate_args)
    if validate_args:
        check_positive_at_active("stds", stds, mask)
    dtype = compute_dtype(stds.dtype)
    active = mask.unsqueeze(-1).expand(stds.shape)
    # Inactive positions are replaced before any arithmetic: never read, zero gradient.
    sigma = torch.where(active, stds.to(dtype), 1.0)
    per_element = -(sigma + eps).log() - _HALF_LOG_TWO_PI_E
    total = torch.where(active, per_element, 0.0).sum()
    count = active.sum().clamp_min(1).to(dtype)
    return (total / count).to(stds.dtype)
