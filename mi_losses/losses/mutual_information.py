"""Module form of the sub-batch (leave-one-out) mutual information estimate."""

from __future__ import annotations

from typing import get_args

import torch

from mi_losses import keys
from mi_losses._validation import check_bool, check_choice
from mi_losses.functional import mutual_information_sub_batch_estimate
from mi_losses.functional.bounds import bounds_estimates
from mi_losses.losses.base import MutualInformationLoss, reduce, to_units
from mi_losses.types import Granularity, Reduction, Units


class SubBatchMutualInformation(MutualInformationLoss):
    """Upper bound (in expectation) on the mutual information between clean and noisy embeddings.

    Thin wrapper over :func:`mi_losses.functional.mutual_information_sub_batch_estimate`. The
    batch is split in halves; queries ``i`` are the first half, components ``j`` the second::

        r_ij = sum_P [ log sigma_j - log sigma_i
                       + 0.5 ((y_i - c_j)/sigma_j)^2 - 0.5 ((y_i - c_i)/sigma_i)^2 ]
        I    = mean over valid queries of  - log( 1/|V_i| * sum_{j in V_i} exp(-r_ij) )

    the leave-one-out ("L1Out") estimator of Poole et al. (2019), so minimising it is a sound
    privacy objective. It decomposes exactly as ``I = H(Y) - H(Y|X)`` into the component losses.

    Args:
        combine_noise_masks: compare a pair only on positions noised in both the query and the
            component (``combine_noise_masks_for_mutual_information_sub_batches`` of the
            functional API); if false, components use all positions.
        granularity: ``"sequence"`` (one sample = one sequence) or ``"token"`` (one sample =
            one active token).
        symmetric: average the estimate over both directions (each half as the queries).
        units: ``"nats"`` or ``"bits"`` (value and components divided by ln 2).
        reduction: ``"mean"`` over valid queries (the estimate), ``"sum"`` (the mean times the
            number of valid queries) or ``"none"`` (per-query values, ``0`` where invalid).
        log_lower_bound: also compute the InfoNCE lower bound from the same pairwise pass
            (:func:`mi_losses.functional.mutual_information_bounds`) and add it to the
            components as ``mutual_information_lower_bound_loss`` (the value returned is
            unchanged).

    Attributes:
        component_losses: ``gaussian_mixture_mahalanobis_distance_loss``,
            ``gaussian_mixture_log_constants_and_determinant_loss``,
            ``gaussian_mixture_entropy_loss``, ``std_log_loss`` and ``mutual_information_loss``
            of the latest call (in ``units``), and ``mutual_information_lower_bound_loss`` with
            ``log_lower_bound``; ``last_num_queries`` their weight.

    Example:
        >>> loss = SubBatchMutualInformation()
        >>> x, mu, sigma = torch.randn(4, 3, 2), torch.zeros(4, 3, 2), torch.ones(4, 3, 2)
        >>> value = loss(mu, sigma, None, x, x + sigma * torch.randn(4, 3, 2))
        >>> bool(value == loss.component_losses["mutual_information_loss"])
        True
    """

    def __init__(
        self,
        combine_noise_masks: bool = True,
        granularity: Granularity = "sequence",
        symmetric: bool = False,
        units: Units = "nats",
        reduction: Reduction = "mean",
        *,
        log_lower_bound: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_bool(owner, "combine_noise_masks", combine_noise_masks)
        check_choice(owner, "granularity", granularity, get_args(Granularity))
        check_bool(owner, "symmetric", symmetric)
        check_choice(owner, "units", units, get_args(Units))
        check_choice(owner, "reduction", reduction, get_args(Reduction))
        check_bool(owner, "log_lower_bound", log_lower_bound)
        self.combine_noise_masks = combine_noise_masks
        self.granularity = granularity
        self.symmetric = symmetric
        self.units = units
        self.reduction = reduction
        self.log_lower_bound = log_lower_bound

    def forward(
        self,
        means_tensor: torch.Tensor,
        stds_tensor: torch.Tensor,
        noise_mask: torch.Tensor | None,
        clean_input_embeddings: torch.Tensor,
        noisy_input_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """MI estimate for a batch of ``(B, S, E)`` tensors, ``B`` even; ``noise_mask`` ``(B, S)``."""
        arguments = (
            means_tensor,
            stds_tensor,
            noise_mask,
            clean_input_embeddings,
            noisy_input_embeddings,
            self.combine_noise_masks,
        )
        options = {"granularity": self.granularity, "symmetric": self.symmetric}
        if self.log_lower_bound:
            lower, estimate = bounds_estimates(*arguments, **options)  # type: ignore[arg-type]
            estimate.components[keys.MUTUAL_INFORMATION_LOWER_BOUND] = lower.value.detach()
        else:
            estimate = mutual_information_sub_batch_estimate(*arguments, **options)  # type: ignore[arg-type]
        estimate = to_units(estimate, self.units)
        self._remember(estimate)
        return reduce(estimate, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"combine_noise_masks={self.combine_noise_masks}, granularity={self.granularity!r}, "
            f"symmetric={self.symmetric}, units={self.units!r}, reduction={self.reduction!r}, "
            f"log_lower_bound={self.log_lower_bound}"
        )
