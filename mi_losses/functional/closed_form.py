"""Closed-form ground truths: the entropy of a Gaussian and the MI of a Gaussian channel."""

from __future__ import annotations

import math

import torch

from mi_losses._validation import _shape, check_floating, check_positive

__all__ = ["gaussian_channel_mutual_information", "gaussian_differential_entropy"]

_LOG_TWO_PI_E = math.log(2.0 * math.pi * math.e)


def gaussian_differential_entropy(
    stds: torch.Tensor | None = None,
    *,
    covariance: torch.Tensor | None = None,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Differential entropy of a ``d``-dimensional Gaussian, in nats.

    $$H = \tfrac12 \log\big((2\pi e)^d \det\Sigma\big)$$

    Give either ``stds`` (a diagonal covariance, ``Sigma = diag(stds^2)``, so
    ``H = sum_k log stds_k + d/2 log(2 pi e)``) or a full ``covariance`` (``log det`` by
    Cholesky). The entropy does not depend on the mean.

    Args:
        stds: ``(..., d)`` standard deviations ``> 0``.
        covariance: ``(..., d, d)`` symmetric positive-definite covariance matrices.
        validate_args: check ``stds > 0`` (a non-positive-definite covariance always raises).

    Returns:
        ``(...)`` entropies in nats, in the input dtype; differentiable.

    Raises:
        ValueError: neither or both given, a scalar ``stds``, a non-square covariance,
            ``stds`` not ``> 0``, or a covariance that is not positive definite.

    Example:
        >>> round(gaussian_differential_entropy(torch.ones(2)).item(), 4)  # 2 * 0.5 log(2 pi e)
        2.8379
        >>> round(gaussian_differential_entropy(covariance=torch.eye(2)).item(), 4)
        2.8379
    """
    if (stds is None) == (covariance is None):
        raise ValueError("give exactly one of stds and covariance")
    if stds is not None:
        check_floating("stds", stds)
        if stds.ndim < 1:
            raise ValueError("stds must have at least 1 dimension (..., d), got a scalar")
        if validate_args:
            check_positive("stds", stds)
        return stds.log().sum(-1) + 0.5 * stds.shape[-1] * _LOG_TWO_PI_E
    assert covariance is not None
    check_floating("covariance", covariance)
    if covariance.ndim < 2 or covariance.shape[-1] != covariance.shape[-2]:
        raise ValueError(f"covariance must have shape (..., d, d), got {_shape(covariance.shape)}")
    factor, info = torch.linalg.cholesky_ex(covariance)
    if bool((info != 0).any()):
        raise ValueError("covariance must be symmetric positive definite")
    log_det: torch.Tensor = 2.0 * factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (covariance.shape[-1] * _LOG_TWO_PI_E + log_det)


def gaussian_channel_mutual_information(
    signal_stds: torch.Tensor,
    noise_stds: torch.Tensor,
    *,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Mutual information of the Gaussian channel ``Y = X + N``, in nats.

    ``X ~ N(0, diag s^2)`` and independent ``N ~ N(0, diag sigma^2)``:

    $$I(X; Y) = \tfrac12 \sum_k \log\Big(1 + \frac{s_k^2}{\sigma_k^2}\Big)$$

    (``H(Y) - H(Y | X)`` of two Gaussians). The ground truth the calibration and the tests
    compare every estimator with.

    Args:
        signal_stds: ``s >= 0``, ``(..., d)``.
        noise_stds: ``sigma > 0``, ``(..., d)``, broadcastable with ``signal_stds``.
        validate_args: check ``sigma > 0`` and ``s`` finite.

    Returns:
        ``(...)`` the broadcast shape without its last axis, nats; differentiable.

    Raises:
        ValueError: scalar inputs, shapes that do not broadcast, or bad values.

    Example:
        >>> mi = gaussian_channel_mutual_information(torch.ones(4), torch.ones(4))
        >>> round(mi.item(), 4)  # 4 * 0.5 log 2
        1.3863
    """
    check_floating("signal_stds", signal_stds)
    check_floating("noise_stds", noise_stds)
    for name, tensor in (("signal_stds", signal_stds), ("noise_stds", noise_stds)):
        if tensor.ndim < 1:
            raise ValueError(f"{name} must have at least 1 dimension (..., d), got a scalar")
    try:
        torch.broadcast_shapes(signal_stds.shape, noise_stds.shape)  # type: ignore[no-untyped-call]
    except RuntimeError as error:
        raise ValueError(
            f"signal_stds and noise_stds must broadcast together, got "
            f"{_shape(signal_stds.shape)} and {_shape(noise_stds.shape)}"
        ) from error
    if validate_args:
        check_positive("noise_stds", noise_stds)
        if not bool(signal_stds.isfinite().all()):
            raise ValueError("signal_stds must be finite")
    return 0.5 * torch.log1p((signal_stds / noise_stds).square()).sum(-1)
