"""Square Mahalanobis distances under diagonal Gaussians: broadcast and pairwise (matmul) forms."""

from __future__ import annotations

from typing import NamedTuple

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
    host_fallback,
)
from mi_losses.functional._pairs import check_active_values
from mi_losses.kernels.directions import effective_masks
from mi_losses.kernels.factors import sides
from mi_losses.kernels.scores import scores
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
    without the `(M, N, S, E)` tensor, forward or backward. `kernel` sets the rounding check
    ([numerics](math.md#numerics)).

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
    distance = pairwise_mahalanobis(x, y, stds, a, b, compute_dtype(dtype), options.accuracy_check)
    return distance.to(dtype)


def pairwise_mahalanobis(
    queries: torch.Tensor,
    centres: torch.Tensor,
    stds: torch.Tensor,
    query_mask: torch.Tensor,
    component_mask: torch.Tensor,
    dtype: torch.dtype,
    accuracy_check: bool = True,
) -> torch.Tensor:
    """The pairwise distances from differentiable torch operations (any order of derivatives).

    Masks are bool. Features are centred on the (detached) mean of the active centres and scaled
    by the largest active std, then the square is expanded into matrix products (docs/math.md,
    Performance). Where that rounding would exceed the tolerance for some pair, a float32
    evaluation is redone in float64; in float64 the flagged pairs are evaluated directly.
    """
    a, b = effective_masks(query_mask, component_mask)
    pairs = Pairs(queries, centres, stds, a, b)
    distance, excess = _expanded(pairs, dtype)
    if not accuracy_check:
        return distance
    return _accurate(distance, excess, pairs, dtype)


class Pairs(NamedTuple):
    """The distances' inputs: ``(M, S, E)`` queries, ``(N, S, E)`` centres and stds, and the
    effective bool masks ``a`` ``(M, S)``, ``b`` ``(N, S)``."""

    queries: torch.Tensor
    centres: torch.Tensor
    stds: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor


@host_fallback
def _accurate(
    distance: torch.Tensor, excess: torch.Tensor, pairs: Pairs, dtype: torch.dtype
) -> torch.Tensor:
    """``distance``, or where its rounding ``excess`` is positive the float64 re-evaluation
    (eagerly under ``torch.compile``: compiled results are checked too)."""
    if bool(excess.max() > 0) if excess.numel() else False:
        if dtype != torch.float64:
            distance, excess = _expanded(pairs, torch.float64)
            distance = distance.to(dtype)
        if bool(excess.max() > 0):
            rows, cols = (excess > 0).nonzero(as_tuple=True)
            direct = _direct(pairs, rows, cols, torch.float64)
            distance = distance.index_put((rows, cols), direct.to(distance.dtype))
    return distance


def _expanded(pairs: Pairs, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``D`` by matrix products, and per pair the rounding error beyond the tolerance."""
    queries, centres, stds, a, b = pairs
    s = sides(queries, None, centres, None, stds, a, b, dtype)
    block = scores(s, check=True)
    assert block.excess is not None
    assert s.components.p is not None
    distance = torch.where(
        block.valid, block.z + s.queries.a @ s.components.p.T, 0.0
    )  # z = -(D + sum_P p)
    return (-distance).clamp_min(0.0), block.excess


def _direct(
    pairs: Pairs, rows: torch.Tensor, cols: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``D`` of the pairs ``(rows, cols)`` from the differences themselves (no cancellation)."""
    queries, centres, stds, a, b = pairs
    active = (a[rows] & b[cols]).unsqueeze(-1)
    difference = torch.where(active, queries[rows].to(dtype) - centres[cols].to(dtype), 0.0)
    sigma = torch.where(active, stds[cols].to(dtype), 1.0)
    return 0.5 * (difference / sigma).square().sum((-1, -2))
