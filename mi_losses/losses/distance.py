"""Module form of the square Mahalanobis distance."""

from __future__ import annotations

from typing import get_args

import torch

from mi_losses._validation import check_choice
from mi_losses.functional import square_mahalanobis_distance
from mi_losses.losses.base import ComponentLossModule
from mi_losses.types import Estimate, Reduction


class MahalanobisDistance(ComponentLossModule):
    """Square Mahalanobis distance of ``y`` from ``x`` under the diagonal ``stds``.

    Thin wrapper over :func:`mi_losses.functional.square_mahalanobis_distance`::

        d_b = sum over active s, over e of 0.5 * ((x_bse - y_bse) / stds_bse)^2

    (the exponent of the Gaussian density, so it is half the textbook square distance), then
    reduced over the samples ``b``. Unit: squared standard deviations (dimensionless).

    Args:
        reduction: ``"mean"`` or ``"sum"`` over the per-sample distances, or ``"none"`` to
            return the per-sample distances of shape ``(B,)``.

    Attributes:
        component_losses: ``{"square_mahalanobis_distance": mean over samples}`` of the latest
            call, whatever the reduction, so that the logged value is comparable across
            batch sizes; ``last_num_queries`` is the number of samples.

    Example:
        >>> loss = MahalanobisDistance(reduction="mean")
        >>> x = torch.zeros(2, 3, 4)
        >>> loss(x, x + 1.0, torch.ones(2, 3, 4))
        tensor(6.)
    """

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_choice(type(self).__name__, "reduction", reduction, get_args(Reduction))
        self.reduction = reduction

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        stds: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Distances of ``y`` ``(B, S, E)`` from ``x`` ``(B, S, E)``; ``mask`` ``(B, S)`` or None.

        Returns:
            A scalar for ``"mean"``/``"sum"``, the ``(B,)`` distances for ``"none"``.
        """
        distances = square_mahalanobis_distance(x, y, stds, mask)
        self._remember(
            Estimate(
                value=distances.mean(),
                components={"square_mahalanobis_distance": distances.detach().mean()},
                num_queries=torch.tensor(distances.numel(), dtype=torch.int64),
            )
        )
        if self.reduction == "mean":
            return distances.mean()
        if self.reduction == "sum":
            return distances.sum()
        return distances

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
