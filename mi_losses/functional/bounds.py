"""Lower (InfoNCE) and upper (L1Out) estimates of the mutual information from one pairwise pass."""

from __future__ import annotations

from typing import NamedTuple

import torch

from mi_losses import keys
from mi_losses._validation import check_bool, check_losses
from mi_losses.functional._mixture import average_estimates, query_mean, to_result
from mi_losses.functional._pairs import direction_estimates
from mi_losses.functional.mutual_information import prepare_mutual_information
from mi_losses.kernels import Result
from mi_losses.options import GatherOptions, KernelOptions
from mi_losses.types import ComponentLossesDict, Estimate, Granularity, Kernel

__all__ = ["MutualInformationBounds", "mutual_information_bounds"]


class MutualInformationBounds(NamedTuple):
    """A sandwich of the mutual information, in nats.

    Attributes:
        lower: InfoNCE estimate, a lower bound in expectation (at least that much leaks).
        upper: leave-one-out (L1Out) estimate, an upper bound in expectation (at most that much
            leaks); equal to :func:`~mi_losses.functional.mutual_information_sub_batch`.
    """

    lower: torch.Tensor
    upper: torch.Tensor


def mutual_information_bounds(
    means_tensor: torch.Tensor,
    stds_tensor: torch.Tensor,
    noise_mask: torch.Tensor | None,
    clean_input_embeddings: torch.Tensor,
    noisy_input_embeddings: torch.Tensor,
    combine_noise_masks_for_mutual_information_sub_batches: bool = True,
    losses: ComponentLossesDict | None = None,
    *,
    granularity: Granularity = "sequence",
    symmetric: bool = False,
    validate_args: bool = True,
    kernel: Kernel | KernelOptions = "auto",
    gather: GatherOptions | None = None,
) -> MutualInformationBounds:
    r"""InfoNCE lower and L1Out upper estimates of $I(X; Y)$ from one pairwise pass, in nats.

    With the log-ratios $r_{ij}$ of :func:`~mi_losses.functional.mutual_information_sub_batch`
    (same arguments, halves, masks and valid sets $V_i$):

    $$I^{\text{upper}}_i = -\log \frac{1}{|V_i|} \sum_{j \in V_i} e^{-r_{ij}},\qquad
      I^{\text{lower}}_i = -\log \frac{1 + \sum_{j \in V_i} e^{-r_{ij}}}{|V_i| + 1}.$$

    The lower estimate adds each query's own component to its mixture: a **lower bound** in
    expectation, never above $\log(|V_i| + 1)$; the upper one is an **upper bound** in
    expectation ([the sandwich](math.md#bounds-from-one-pass)). `losses` gets the sub-batch
    components and `mutual_information_lower_bound_loss`.

    Example:
        >>> x = torch.randn(8, 4, 2)
        >>> mu, sigma = torch.zeros_like(x), torch.full_like(x, 0.5)
        >>> bounds = mutual_information_bounds(mu, sigma, None, x, x + sigma * torch.randn_like(x))
        >>> bool(bounds.lower <= torch.log(torch.tensor(5.0)))
        True
    """
    check_losses(losses)
    lower, upper = bounds_estimates(
        means_tensor,
        stds_tensor,
        noise_mask,
        clean_input_embeddings,
        noisy_input_embeddings,
        combine_noise_masks_for_mutual_information_sub_batches,
        granularity=granularity,
        symmetric=symmetric,
        validate_args=validate_args,
        kernel=kernel,
        gather=gather,
        with_components=losses is not None,
    )
    if losses is not None:
        losses.update(upper.components)
        losses[keys.MUTUAL_INFORMATION_LOWER_BOUND] = lower.value.detach()
    return MutualInformationBounds(lower.value, upper.value)


def bounds_estimates(
    means_tensor: torch.Tensor,
    stds_tensor: torch.Tensor,
    noise_mask: torch.Tensor | None,
    clean_input_embeddings: torch.Tensor,
    noisy_input_embeddings: torch.Tensor,
    combine_noise_masks_for_mutual_information_sub_batches: bool = True,
    *,
    granularity: Granularity = "sequence",
    symmetric: bool = False,
    validate_args: bool = True,
    kernel: Kernel | KernelOptions = "auto",
    gather: GatherOptions | None = None,
    with_components: bool = True,
) -> tuple[Estimate, Estimate]:
    """``(lower, upper)`` as :class:`~mi_losses.types.Estimate` (components on the upper)."""
    check_bool("", "with_components", with_components)
    prepared = prepare_mutual_information(
        means_tensor,
        stds_tensor,
        noise_mask,
        clean_input_embeddings,
        noisy_input_embeddings,
        combine_noise_masks_for_mutual_information_sub_batches,
        granularity=granularity,
        symmetric=symmetric,
        validate_args=validate_args,
        kernel=kernel,
        gather=gather,
    )
    result = prepared.run(with_components)
    uppers = direction_estimates(
        result, prepared.sizes, with_own=True, with_components=with_components
    )
    lowers = _lower_estimates(result, prepared.sizes)
    return (
        to_result(average_estimates(lowers), prepared.result_dtype),
        to_result(average_estimates(uppers), prepared.result_dtype),
    )


def _lower_estimates(stream: Result, sizes: list[int]) -> list[Estimate]:
    """``I_lower_i = log(|V_i| + 1) - log(1 + exp(logsumexp_i))`` per direction."""
    estimates, offset = [], 0
    for size in sizes:
        lse = stream.log_sum_exp[offset : offset + size]
        count = stream.num_valid[offset : offset + size]
        offset += size
        valid = count > 0
        safe = torch.where(valid, lse, 0.0)
        per_query = (count + 1.0).log() - torch.logaddexp(torch.zeros_like(safe), safe)
        per_query = torch.where(valid, per_query, 0.0)
        estimates.append(Estimate(query_mean(per_query, valid), {}, valid.sum(), per_query))
    return estimates
