"""Module form of the square Mahalanobis distance."""

from __future__ import annotations

import torch

from mi_losses.functional import square_mahalanobis_distance
from mi_losses.losses.base import ComponentLossModule
from mi_losses.types import Estimate, Reduction


class MahalanobisDistance(ComponentLossModule):
    r"""Square Mahalanobis distance of ``y`` from ``x`` under the diagonal ``stds``.

    Module form of :func:`mi_losses.functional.square_mahalanobis_distance`,
    $d_b = \sum_{s \text{ active}} \sum_e \tfrac12 ((x_{bse} - y_{bse}) / \sigma_{bse})^2$
    (the exponent of the Gaussian density), reduced over the samples $b$. Unit: squared
    standard deviations (dimensionless).

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
        super().__init__(reduction=reduction)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        stds: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Distances of `y` `(B, S, E)` from `x` `(B, S, E)`; `mask` `(B, S)` or None: a scalar
        for `"mean"`/`"sum"`, the `(B,)` distances for `"none"`."""
        distances = square_mahalanobis_distance(x, y, stds, mask)
        estimate = Estimate(
            value=distances.mean(),
            components={"square_mahalanobis_distance": distances.detach().mean()},
            num_queries=torch.tensor(distances.numel(), dtype=torch.int64),
            per_query=distances,
        )
        return self._output(estimate)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
