"""Square Mahalanobis distances under diagonal Gaussians: broadcast and pairwise (matmul) forms."""

from __future__ import annotations

import torch

from mi_losses._validation import (
    _shape,
    as_bool_mask,
    check_floating,
    check_ndim,
    check_positive,
    check_same_device,
    check_same_shape,
    compute_dtype,
    result_dtype,
)

__all__ = ["pairwise_square_mahalanobis_distance", "square_mahalanobis_distance"]

# Rounding the expanded terms ``[a y^2].W`` and ``[a].U`` (their sum is the pair's "magnitude")
# costs about ``eps * magnitude`` nats of absolute accuracy in the distance: nothing when the
# data are centred and independent, a lot for near-duplicate samples far from the batch mean
# (relative to sigma). Pairs that would lose more than this relative and absolute tolerance are
# rare; when any exists the distances are evaluated again in float64.
_RELATIVE_TOLERANCE = 1e-5
_ABSOLUTE_TOLERANCE = 1e-4  # nats


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
    if validate_args:
        check_positive("stds", stds)
    try:
        shape = torch.broadcast_shapes(x.shape, y.shape, stds.shape)
    except RuntimeError as error:
        raise ValueError(
            f"x, y and stds must broadcast together, got {_shape(x.shape)}, "
            f"{_shape(y.shape)} and {_shape(stds.shape)}"
        ) from error
    dtype = compute_dtype(x, y, stds)
    terms = 0.5 * ((x.to(dtype) - y.to(dtype)) / stds.to(dtype)).square().sum(-1)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        try:
            mask_shape = torch.broadcast_shapes(mask.shape, shape[:-1])
        except RuntimeError as error:
            raise ValueError(
                f"mask must broadcast against {_shape(shape[:-1])}, got {_shape(mask.shape)}"
            ) from error
        if mask_shape != shape[:-1]:
            raise ValueError(
                f"mask must broadcast to {_shape(shape[:-1])} without growing it, "
                f"got {_shape(mask.shape)}"
            )
        active = mask if mask.dtype == torch.bool else mask != 0
        terms = torch.where(active, terms, torch.zeros((), dtype=dtype, device=terms.device))
    return terms.sum(-1).to(result_dtype(x, y, stds))


def pairwise_square_mahalanobis_distance(
    queries: torch.Tensor,
    centres: torch.Tensor,
    stds: torch.Tensor,
    query_mask: torch.Tensor | None = None,
    component_mask: torch.Tensor | None = None,
    *,
    validate_args: bool = True,
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
    if validate_args:
        check_positive("stds", stds)
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
    distance = pairwise_mahalanobis(
        queries.to(dtype), centres.to(dtype), stds.to(dtype), a.to(dtype), b.to(dtype)
    )
    return distance.to(result_dtype(queries, centres, stds))


def pairwise_mahalanobis(
    queries: torch.Tensor,
    centres: torch.Tensor,
    stds: torch.Tensor,
    query_mask: torch.Tensor,
    component_mask: torch.Tensor,
) -> torch.Tensor:
    """The pairwise kernel on validated inputs of one floating dtype; masks as 0/1 floats.

    Centres every feature on the (detached) mean of the active component centres, then expands
    the square into two ``(M, S*E) x (S*E, N)`` products and one ``(M, S) x (S, N)`` product
    (MATH.md, Performance). Where the expansion would cancel too many digits in the compute
    dtype, it is evaluated again in float64.
    """
    with torch.no_grad():
        weight = component_mask.unsqueeze(-1)
        reference = (weight * centres).sum(0) / weight.sum(0).clamp_min(1.0)
    queries, centres = queries - reference, centres - reference
    distance, excess_error = _ExpandedMahalanobis.apply(
        queries, centres, stds, query_mask, component_mask
    )
    if distance.dtype != torch.float64 and bool(excess_error > _ABSOLUTE_TOLERANCE):
        distance, _ = _ExpandedMahalanobis.apply(
            queries.double(),
            centres.double(),
            stds.double(),
            query_mask.double(),
            component_mask.double(),
        )
        distance = distance.to(queries.dtype)
    return distance


class _ExpandedMahalanobis(torch.autograd.Function):
    """``D = 0.5 [a y^2].[W]^T - [a y].[V]^T + 0.5 [a].[U]^T`` with hand-written backward.

    ``W = b / sigma^2``, ``V = W c`` and ``U = sum_e W c^2``, for centred queries ``y``
    ``(M, S, E)`` and centres ``c`` ``(N, S, E)``. The forward pass runs two large matrix
    products, the backward pass four, and nothing of size ``(M, N, S, E)`` is ever formed.
    The second output is the largest rounding error of the expansion, ``eps * magnitude``, in
    excess of the relative tolerance ``_RELATIVE_TOLERANCE * D`` over all pairs.
    """

    @staticmethod
    def forward(ctx, queries, centres, stds, query_mask, component_mask):
        num_queries, num_components = queries.shape[0], centres.shape[0]
        masked = queries * query_mask.unsqueeze(-1)
        inverse_variance = component_mask.unsqueeze(-1) / stds.square()
        weighted = centres * inverse_variance
        flat = masked.reshape(num_queries, -1)
        squares = flat.square() @ inverse_variance.reshape(num_components, -1).T
        cross = flat @ weighted.reshape(num_components, -1).T
        magnitude = squares.add_(query_mask @ (weighted * centres).sum(-1).T)
        distance = magnitude.sub(cross, alpha=2.0).mul_(0.5).clamp_min_(0.0)
        eps = torch.finfo(distance.dtype).eps
        excess_error = magnitude.mul_(eps).sub_(distance, alpha=_RELATIVE_TOLERANCE)
        excess_error = excess_error.amax() if excess_error.numel() else distance.new_zeros(())
        ctx.save_for_backward(masked, centres, stds, query_mask, inverse_variance, weighted)
        ctx.mark_non_differentiable(excess_error)
        return distance, excess_error

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _):
        masked, centres, stds, query_mask, inverse_variance, weighted = ctx.saved_tensors
        num_queries, num_components = masked.shape[0], centres.shape[0]
        flat = masked.reshape(num_queries, -1)
        grad_queries = None
        if ctx.needs_input_grad[0]:
            # dD/dy_i = sum_j g_ij (y_i W_j - V_j), masked to the query's active positions.
            through_w = grad @ inverse_variance.reshape(num_components, -1)
            through_v = grad @ weighted.reshape(num_components, -1)
            grad_queries = (flat * through_w - through_v).reshape(masked.shape)
            grad_queries.mul_(query_mask.unsqueeze(-1))
        grad_centres = grad_stds = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_t = grad.T
            grad_w = (grad_t @ flat.square()).mul_(0.5).reshape(centres.shape)
            grad_v = (grad_t @ flat).neg_().reshape(centres.shape)
            grad_u = (grad_t @ query_mask).mul_(0.5).unsqueeze(-1)
            if ctx.needs_input_grad[1]:
                grad_centres = inverse_variance * (grad_v + 2.0 * grad_u * centres)
            if ctx.needs_input_grad[2]:
                # W, V = W c and U = sum_e W c^2 all depend on sigma through W = b / sigma^2.
                grad_w += grad_v * centres + grad_u * centres.square()
                grad_stds = grad_w.mul_(inverse_variance).div_(stds).mul_(-2.0)
        return grad_queries, grad_centres, grad_stds, None, None
