"""Module form of the sub-batch (leave-one-out) mutual information estimate."""

from __future__ import annotations

import torch

from mi_losses import keys
from mi_losses._validation import check_bool
from mi_losses.functional import mutual_information_sub_batch_estimate
from mi_losses.functional.bounds import bounds_estimates
from mi_losses.losses.base import MixtureLossModule, MutualInformationLoss
from mi_losses.options import DEFAULT_MAX_BLOCK_BYTES
from mi_losses.types import Estimate, Granularity, Kernel, Reduction, Units


class SubBatchMutualInformation(MixtureLossModule, MutualInformationLoss):
    """Upper bound (in expectation) on $I(X; Y)$: the leave-one-out estimate of one batch.

    Module form of :func:`mi_losses.functional.mutual_information_sub_batch`: queries are the
    first half of the batch, components the second; minimising it is a sound privacy objective,
    and its components split it as $I = H(Y) - H(Y|X)$.

    Args:
        combine_noise_masks_for_mutual_information_sub_batches: compare a pair only on
            positions noised in both (as in the function).
        symmetric: average both directions (each half as the queries).
        log_lower_bound: also log the InfoNCE lower bound of the same pass as
            `mutual_information_lower_bound_loss` (the value returned is unchanged).

    The other options (`granularity`, `kernel`, `max_block_bytes`, `accuracy_check`,
    `gather`, `max_gathered_components`, `units`, `reduction`) are those of
    :class:`~mi_losses.losses.base.MixtureLossModule`.

    Example:
        >>> loss = SubBatchMutualInformation()
        >>> x, mu, sigma = torch.randn(4, 3, 2), torch.zeros(4, 3, 2), torch.ones(4, 3, 2)
        >>> value = loss(mu, sigma, None, x, x + sigma * torch.randn(4, 3, 2))
        >>> bool(value == loss.component_losses["mutual_information_loss"])
        True
    """

    def __init__(
        self,
        combine_noise_masks_for_mutual_information_sub_batches: bool = True,
        granularity: Granularity = "sequence",
        symmetric: bool = False,
        units: Units = "nats",
        reduction: Reduction = "mean",
        gather: bool = False,
        max_gathered_components: int | None = None,
        *,
        log_lower_bound: bool = False,
        kernel: Kernel = "auto",
        max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
        accuracy_check: bool = True,
    ) -> None:
        super().__init__(
            granularity,
            kernel=kernel,
            max_block_bytes=max_block_bytes,
            accuracy_check=accuracy_check,
            gather=gather,
            max_gathered_components=max_gathered_components,
            units=units,
            reduction=reduction,
        )
        owner = type(self).__name__
        check_bool(
            owner,
            "combine_noise_masks_for_mutual_information_sub_batches",
            combine_noise_masks_for_mutual_information_sub_batches,
        )
        check_bool(owner, "symmetric", symmetric)
        check_bool(owner, "log_lower_bound", log_lower_bound)
        self.combine_noise_masks_for_mutual_information_sub_batches = (
            combine_noise_masks_for_mutual_information_sub_batches
        )
        self.symmetric = symmetric
        self.log_lower_bound = log_lower_bound

    def estimate(
        self,
        means_tensor: torch.Tensor,
        stds_tensor: torch.Tensor,
        noise_mask: torch.Tensor | None,
        clean_input_embeddings: torch.Tensor,
        noisy_input_embeddings: torch.Tensor,
    ) -> Estimate:
        """The sub-batch estimate, with the lower bound among its components if asked."""
        arguments = (
            means_tensor,
            stds_tensor,
            noise_mask,
            clean_input_embeddings,
            noisy_input_embeddings,
            self.combine_noise_masks_for_mutual_information_sub_batches,
        )
        if not self.log_lower_bound:
            return mutual_information_sub_batch_estimate(
                *arguments,
                granularity=self.granularity,
                symmetric=self.symmetric,
                kernel=self.kernel_options,
                gather=self.gather_options,
            )
        lower, estimate = bounds_estimates(
            *arguments,
            granularity=self.granularity,
            symmetric=self.symmetric,
            kernel=self.kernel_options,
            gather=self.gather_options,
        )
        estimate.components[keys.MUTUAL_INFORMATION_LOWER_BOUND] = lower.value.detach()
        return estimate

    def extra_repr(self) -> str:
        return (
            f"combine_noise_masks_for_mutual_information_sub_batches={self.combine_noise_masks_for_mutual_information_sub_batches}, symmetric={self.symmetric}, "
            f"log_lower_bound={self.log_lower_bound}, {super().extra_repr()}"
        )
