"""Square Mahalanobis distances under diagonal Gaussians: broadcast and pairwise (matmul) forms."""

from __future__ import annotations

import torch

from mi_losses._validation import (
    _shape,
    as_bool_mask,
    check_bool,
    check_finite_at_active,
    check_floating,
    check_ndim,
    check_positive_at_active,
    check_same_device,
    check_same_shape,
    compute_dtype,
    result_dtype,
)
from mi_losses.functional._pairs import check_active_values
from mi_losses.kernels.factors import effective_masks, scores, sides

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

    .. math::
        d = \sum_{s \in \text{mask}} \sum_e \tfrac12 \left(\frac{x_{se} - y_{se}}{\sigma_{se}}\right)^2

    The ``0.5`` makes ``d`` the exponent of the Gaussian density. ``x``, ``y`` and ``stds``
    broadcast against each other; the last axis is ``E`` and the one before it ``S``.
    ``(B, S, E)`` inputs give ``(B,)``; ``(M, 1, S, E)`` against ``(1, N, S, E)`` gives the
    ``(M, N)`` pairwise matrix (use :func:`pairwise_square_mahalanobis_distance` for that: same
    values without materialising ``(M, N, S, E)``).

    Args:
        x: points, ``(..., S, E)``.
        y: points, ``(..., S, E)``, broadcastable with ``x``.
        stds: standard deviations ``> 0``, ``(..., S, E)``, broadcastable with both.
        mask: active positions, bool or 0/1, broadcastable against the broadcast shape without
            its last axis, ``(..., S)``; ``None`` means all positions.
        validate_args: check that ``stds`` is finite and ``> 0`` (one pass).

    Returns:
        The distances, shape: the broadcast shape without its last two axes. Computed in
        float32 or better, returned in the promoted input dtype.

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
    dtype, out_dtype = compute_dtype(x, y, stds), result_dtype(x, y, stds)
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
    queries: torch.Tensor,
    centres: torch.Tensor,
    stds: torch.Tensor,
    query_mask: torch.Tensor | None = None,
    component_mask: torch.Tensor | None = None,
    *,
    validate_args: bool = True,
    accuracy_check: bool = True,
) -> torch.Tensor:
    r"""All-pairs square Mahalanobis distance, at matrix-multiply speed and ``O(M N)`` memory.

    .. math::
        D_{ij} = \sum_{s,e} a_{is} b_{js} \tfrac12 \left(\frac{y_{ise} - c_{jse}}{\sigma_{jse}}\right)^2

    with ``a`` the query mask and ``b`` the component mask. Equal to
    ``square_mahalanobis_distance(queries[:, None], centres[None], stds[None], a[:, None] & b[None])``
    without materialising the ``(M, N, S, E)`` tensor, in the forward or the backward pass.

    Args:
        queries: ``y``, shape ``(M, S, E)``.
        centres: ``c``, shape ``(N, S, E)``.
        stds: ``sigma > 0`` of the components, shape ``(N, S, E)``.
        query_mask: ``(M, S)``, bool or 0/1; ``None`` means all positions.
        component_mask: ``(N, S)``, bool or 0/1; ``None`` means all positions.
        validate_args: check the values of ``stds`` and the masks (one pass each).
        accuracy_check: check the rounding of the expanded squares (one host synchronisation
            per call) and re-evaluate the pairs that would exceed the tolerance of
            docs/math.md#numerics; ``False`` skips the check and its synchronisation (it is
            skipped automatically under ``torch.compile``).

    Returns:
        ``(M, N)`` distances in the promoted input dtype (computed in float32 or better).

    Example:
        >>> y, c = torch.zeros(3, 2, 4), torch.ones(5, 2, 4)
        >>> pairwise_square_mahalanobis_distance(y, c, torch.ones(5, 2, 4)).shape
        torch.Size([3, 5])
    """
    for name, tensor in (("queries", queries), ("centres", centres), ("stds", stds)):
        check_floating(name, tensor)
        check_ndim(name, tensor, 3, "(M or N, S, E)")
    check_same_shape("stds", stds, "centres", centres)
    if queries.shape[1:] != centres.shape[1:]:
        raise ValueError(
            f"queries must have shape (M, {centres.shape[1]}, {centres.shape[2]}) to match "
            f"centres {_shape(centres.shape)}, got {_shape(queries.shape)}"
        )
    check_same_device(queries=queries, centres=centres, stds=stds)
    check_bool("", "validate_args", validate_args)
    check_bool("", "accuracy_check", accuracy_check)
    dtype = compute_dtype(queries, centres, stds)
    a = as_bool_mask(
        "query_mask", query_mask, queries.shape[:2], queries.device, validate_values=validate_args
    )
    b = as_bool_mask(
        "component_mask",
        component_mask,
        centres.shape[:2],
        centres.device,
        validate_values=validate_args,
    )
    if validate_args:
        check_active_values(
            {"queries": (queries, a), "centres": (centres, b), "stds": (stds, b)},
            positive=("stds",),
        )
    distance = pairwise_mahalanobis(queries, centres, stds, a, b, dtype, accuracy_check)
    return distance.to(result_dtype(queries, centres, stds))


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
    distance, excess = _expanded(queries, centres, stds, a, b, dtype)
    if not accuracy_check or torch.compiler.is_compiling():  # the check needs the host
        return distance
    if bool(excess.max() > 0) if excess.numel() else False:
        if dtype != torch.float64:
            distance, excess = _expanded(queries, centres, stds, a, b, torch.float64)
            distance = distance.to(dtype)
        if bool(excess.max() > 0):
            rows, cols = (excess > 0).nonzero(as_tuple=True)
            direct = _direct(queries, centres, stds, a, b, rows, cols, torch.float64)
            distance = distance.index_put((rows, cols), direct.to(distance.dtype))
    return distance


def _expanded(
    queries: torch.Tensor,
    centres: torch.Tensor,
    stds: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``D`` by matrix products, and per pair the rounding error beyond the tolerance."""
    s = sides(queries, None, centres, None, stds, a, b, dtype)
    block = scores(s, True)
    assert block.excess is not None
    distance = (-(s.left @ s.right.T) - s.a @ s.p.T).clamp_min(0.0)  # z = -(D + sum_P p)
    return torch.where(block.valid, distance, 0.0), block.excess


def _direct(
    queries: torch.Tensor,
    centres: torch.Tensor,
    stds: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``D`` of the pairs ``(rows, cols)`` from the differences themselves (no cancellation)."""
    active = (a[rows] & b[cols]).unsqueeze(-1)
    difference = torch.where(active, queries[rows].to(dtype) - centres[cols].to(dtype), 0.0)
    sigma = torch.where(active, stds[cols].to(dtype), 1.0)
    return 0.5 * (difference / sigma).square().sum((-1, -2))
