"""Lower (InfoNCE) and upper (L1Out) estimates of the mutual information from one pairwise pass."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from mi_losses import keys
from mi_losses._validation import check_bool
from mi_losses.functional._mixture import average_estimates, query_mean, to_result
from mi_losses.functional._pairs import DEFAULT_MAX_BLOCK_BYTES, direction_estimates
from mi_losses.functional.mutual_information import prepare_mutual_information
from mi_losses.kernels import Stream
from mi_losses.types import ComponentLossesDict, Estimate, Granularity

__all__ = ["MutualInformationBounds", "mutual_information_bounds"]


if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


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
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    accuracy_check: bool = True,
    gather_components: bool = False,
    process_group: ProcessGroup | None = None,
    max_gathered_components: int | None = None,
) -> MutualInformationBounds:
    r"""InfoNCE lower and L1Out upper estimates of ``I(X; Y)`` from one pairwise pass, in nats.

    With ``r_ij`` the log-ratios of :func:`~mi_losses.functional.mutual_information_sub_batch`
    (same arguments, same halves, masks and valid sets ``V_i``):

    .. math::
        I^{\text{upper}}_i &= -\log \frac{1}{|V_i|} \sum_{j \in V_i} e^{-r_{ij}} \\
        I^{\text{lower}}_i &= -\log \frac{1 + \sum_{j \in V_i} e^{-r_{ij}}}{|V_i| + 1}

    The lower estimate adds each query's own component (``r_ii = 0``) to its mixture: in
    expectation it is a **lower bound** on the mutual information (van den Oord et al., 2018;
    Poole et al., 2019), never above ``log(|V_i| + 1)``, and ``I^lower_i <= I^upper_i`` whenever
    ``I^upper_i >= 0``. The upper estimate is an **upper bound** in expectation. Both are
    means over the valid queries (``0`` when there is none), from the same per-query
    ``logsumexp``.

    Args:
        means_tensor: ``mu``, ``(B, S, E)``; ``B`` even, at least 2.
        stds_tensor: ``sigma > 0`` at active positions, ``(B, S, E)``.
        noise_mask: ``(B, S)`` bool or 0/1; ``None`` = all positions.
        clean_input_embeddings: ``x``, ``(B, S, E)``.
        noisy_input_embeddings: ``y``, ``(B, S, E)``.
        combine_noise_masks_for_mutual_information_sub_batches: as in
            :func:`~mi_losses.functional.mutual_information_sub_batch`.
        losses: if given, updated with the components of the sub-batch estimator and
            ``mutual_information_lower_bound_loss`` (the lower estimate), detached.
        granularity: ``"sequence"`` or ``"token"``.
        symmetric: average both directions (each half as the queries).
        validate_args: check masks and values at active positions.
        max_block_bytes: memory budget of the streaming kernel's blocks.
        accuracy_check: see :func:`~mi_losses.functional.mutual_information_sub_batch`.
        gather_components: see :func:`~mi_losses.functional.mutual_information_sub_batch`.
        process_group: see :func:`~mi_losses.functional.mutual_information_sub_batch`.
        max_gathered_components: see
            :func:`~mi_losses.functional.mutual_information_sub_batch`.

    Returns:
        ``MutualInformationBounds(lower, upper)``, scalars in the input dtype, with gradients.

    Example:
        >>> x = torch.randn(8, 4, 2)
        >>> mu, sigma = torch.zeros_like(x), torch.full_like(x, 0.5)
        >>> bounds = mutual_information_bounds(mu, sigma, None, x, x + sigma * torch.randn_like(x))
        >>> bool(bounds.lower <= torch.log(torch.tensor(5.0)))
        True
    """
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
        max_block_bytes=max_block_bytes,
        accuracy_check=accuracy_check,
        with_components=losses is not None,
        gather_components=gather_components,
        process_group=process_group,
        max_gathered_components=max_gathered_components,
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
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    accuracy_check: bool = True,
    with_components: bool = True,
    gather_components: bool = False,
    process_group: ProcessGroup | None = None,
    max_gathered_components: int | None = None,
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
        max_block_bytes=max_block_bytes,
        accuracy_check=accuracy_check,
        gather_components=gather_components,
        process_group=process_group,
        max_gathered_components=max_gathered_components,
    )
    result = prepared.run()
    uppers = direction_estimates(result, prepared.sizes, True, with_components)
    lowers = _lower_estimates(result, prepared.sizes)
    return (
        to_result(average_estimates(lowers), prepared.result_dtype),
        to_result(average_estimates(uppers), prepared.result_dtype),
    )


def _lower_estimates(stream: Stream, sizes: list[int]) -> list[Estimate]:
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
