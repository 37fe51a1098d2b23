"""Square Mahalanobis distances under diagonal Gaussians: broadcast and pairwise (matmul) forms."""

from __future__ import annotations

import torch

from mi_losses._validation import (
    _shape,
    as_bool_mask,
    check_bool,
    check_embeddings,
    check_finite_at_active,
    check_floating,
    check_positive_at_active,
    check_same_device,
    check_same_dtype,
    compute_dtype,
)
from mi_losses.functional._pairs import check_active_values
from mi_losses.kernels.directions import Direction, effective_masks
from mi_losses.kernels.reference import accurate_scores
from mi_losses.options import KernelOptions, check_options
from mi_losses.types import Kernel

__all__ = ["pairwise_square_mahalanobis_distance", "square_mahalanobis_distance"]


def square_mahalanobis_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    stds: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Square Mahalanobis distance under a diagonal covariance, summed over active positions.

    $$d = \sum_{s \in \text{mask}} \sum_e \tfrac12 \Big(\frac{x_{se} - y_{se}}{\sigma_{se}}\Big)^2$$

    The $\tfrac12$ makes $d$ the exponent of the Gaussian density. `x`, `y`, `stds`
    `(..., S, E)` broadcast together (one dtype); `mask` `(..., S)` broadcasts against the
    broadcast shape without its last axis. The result has the broadcast shape without its last
    two axes: `(B, S, E)` inputs give `(B,)` ([the math](math.md#square-mahalanobis-distance)).
    For all pairs use :func:`pairwise_square_mahalanobis_distance`.

    Example:
        >>> x = torch.zeros(2, 3, 4)
        >>> square_mahalanobis_distance(x, x + 2.0, torch.full((2, 3, 4), 2.0))
        tensor([6., 6.])
    """
    for name, tensor in (("x", x), ("y", y), ("stds", stds)):
        check_floating(name, tensor)
        if tensor.ndim < 2:
            raise ValueError(
                f"{name} must have at least 2 dimensions (..., S, E), got {_shape(tensor.shape)}"
            )
    check_same_device(x=x, y=y, stds=stds, mask=mask)
    check_same_dtype(x=x, y=y, stds=stds)
    check_bool("", "validate_args", validate_args)
    try:
        shape = torch.broadcast_shapes(  # type: ignore[no-untyped-call]
            x.shape, y.shape, stds.shape
        )
    except RuntimeError as error:
        raise ValueError(
            f"x, y and stds must broadcast together, got {_shape(x.shape)}, "
            f"{_shape(y.shape)} and {_shape(stds.shape)}"
        ) from error
    dtype, out_dtype = compute_dtype(x.dtype), x.dtype
    x, y, stds = x.to(dtype), y.to(dtype), stds.to(dtype)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        try:
            mask_shape = torch.broadcast_shapes(  # type: ignore[no-untyped-call]
                mask.shape, shape[:-1]
            )
        except RuntimeError as error:
            raise ValueError(
                f"mask must broadcast against {_shape(shape[:-1])}, got {_shape(mask.shape)}"
            ) from error
        if mask_shape != shape[:-1]:
            raise ValueError(
                f"mask must broadcast to {_shape(shape[:-1])} without growing it, "
                f"got {_shape(mask.shape)}"
            )
        active = as_bool_mask("mask", mask, mask.shape, x.device, validate_values=validate_args)
    if validate_args:
        positions = active.expand(shape[:-1]) if mask is not None else None
        for name, tensor in (("x", x), ("y", y)):
            check_finite_at_active(name, tensor.expand(shape), positions)
        check_positive_at_active("stds", stds.expand(shape), positions)
    if mask is not None:
        # Inactive positions are replaced before any arithmetic: never read.
        columns = active.unsqueeze(-1)
        x, y = torch.where(columns, x, 0.0), torch.where(columns, y, 0.0)
        stds = torch.where(columns, stds, 1.0)
    terms = 0.5 * ((x - y) / stds).square().sum(-1)
    result = terms.sum(-1)
    return result.to(out_dtype)


def pairwise_square_mahalanobis_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    stds: torch.Tensor,
    x_mask: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    *,
    validate_args: bool = True,
    kernel: Kernel | KernelOptions = "auto",
) -> torch.Tensor:
    r"""All-pairs :func:`square_mahalanobis_distance`, at matrix-multiply speed and $O(MN)$ memory.

    $$D_{ij} = \sum_{s,e} a_{is} b_{js}\, \tfrac12 \Big(\frac{x_{ise} - y_{jse}}{\sigma_{jse}}\Big)^2$$

    for `x` `(M, S, E)` against `y` and `stds` `(N, S, E)`, with $a$ = `x_mask` `(M, S)` and
    $b$ = `y_mask` `(N, S)` (all positions when `None`): the values of
    `square_mahalanobis_distance(x[:, None], y[None], stds[None], a[:, None] & b[None])`
    without the `(M, N, S, E)` tensor, forward or backward. The matrix is the pair scores of the
    kernel's reference path without their normalisers (one expanded form and one float64
    fallback for the library); `kernel` sets the rounding check ([numerics](math.md#numerics)).

    Example:
        >>> x, y = torch.zeros(3, 2, 4), torch.ones(5, 2, 4)
        >>> pairwise_square_mahalanobis_distance(x, y, torch.ones(5, 2, 4)).shape
        torch.Size([3, 5])
    """
    check_bool("", "validate_args", validate_args)
    options, _ = check_options(kernel, None)
    dtype = check_embeddings({"x": x, "y": y, "stds": stds}, "y", free_batch=("x",))
    a = as_bool_mask("x_mask", x_mask, x.shape[:2], x.device, validate_values=validate_args)
    b = as_bool_mask("y_mask", y_mask, y.shape[:2], y.device, validate_values=validate_args)
    if validate_args:
        check_active_values(
            {"x": x, "y": y, "stds": stds},
            ("stds",),
            lambda: {"x": a, "y": b, "stds": b},
        )
    a, b = effective_masks(a, b)
    # The centres as clean embeddings with zero means (an expanded zero, no memory).
    pairs = Direction(x, None, y, y.new_zeros(()).expand(y.shape), stds, a, b)
    block = accurate_scores(pairs, compute_dtype(dtype), check=options.accuracy_check)
    # z = -D where the pair is valid; -z >= 0 up to rounding.
    return torch.where(block.valid, -block.z, 0.0).clamp_min(0.0).to(dtype)
