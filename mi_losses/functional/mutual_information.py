"""Sub-batch (leave-one-out) estimate of the mutual information between clean and noisy embeddings."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from mi_losses._validation import (
    as_bool_mask,
    check_bool,
    check_embeddings,
    check_granularity,
    check_losses,
    compute_dtype,
)
from mi_losses.functional import _distributed
from mi_losses.functional._mixture import average_estimates, to_result, value_with_losses
from mi_losses.functional._pairs import (
    active_positions,
    as_samples,
    check_active_values,
    direction_estimates,
)
from mi_losses.kernels import Plan, Stream, make_plan, stream
from mi_losses.options import GatherOptions, KernelOptions, check_options
from mi_losses.types import ComponentLossesDict, Estimate, Granularity, Kernel

__all__ = ["mutual_information_sub_batch", "mutual_information_sub_batch_estimate"]


def mutual_information_sub_batch(
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
) -> torch.Tensor:
    r"""Leave-one-out (L1Out) estimate of $I(X; Y)$ in nats, from one batch split in halves.

    Queries $i$ are the first half of the batch, components $j$ the second; over the positions
    $P(i, j)$ both masks share,

    $$r_{ij} = \sum_{P(i,j)} \Big[\log\frac{\sigma_j}{\sigma_i}
      + \tfrac12\Big(\frac{y_i - c_j}{\sigma_j}\Big)^2
      - \tfrac12\Big(\frac{y_i - c_i}{\sigma_i}\Big)^2\Big],\qquad
      I = \operatorname*{mean}_{i} \Big[-\log \frac{1}{|V_i|}\sum_{j\in V_i} e^{-r_{ij}}\Big].$$

    An **upper bound** on the mutual information in expectation (Poole et al., 2019), so a sound
    privacy loss; it splits exactly as $I = H(Y) - H(Y|X)$ into the components written to
    `losses` ([the math](math.md#mutual-information)). The arguments
    are those of [the glossary](glossary.md); `B` must be even.

    Example:
        >>> x = torch.randn(8, 4, 2)
        >>> mu, sigma = torch.zeros_like(x), torch.full_like(x, 0.5)
        >>> y = x + mu + sigma * torch.randn_like(x)
        >>> losses = {}
        >>> mi = mutual_information_sub_batch(mu, sigma, None, x, y, losses=losses)
        >>> torch.allclose(mi, losses["gaussian_mixture_entropy_loss"] + losses["std_log_loss"])
        True
    """
    check_losses(losses)
    estimate = mutual_information_sub_batch_estimate(
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
    return value_with_losses(estimate, losses)


def mutual_information_sub_batch_estimate(
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
) -> Estimate:
    """:func:`mutual_information_sub_batch` as an :class:`~mi_losses.types.Estimate`.

    The estimate also carries the components and the number of valid queries (both directions
    when `symmetric`; this rank's with `gather`); `with_components=False` skips the components.

    Example:
        >>> x = torch.randn(8, 4, 2)
        >>> mu, sigma = torch.zeros_like(x), torch.full_like(x, 0.5)
        >>> y = x + sigma * torch.randn_like(x)
        >>> estimate = mutual_information_sub_batch_estimate(mu, sigma, None, x, y)
        >>> int(estimate.num_queries), estimate.per_query.shape
        (4, torch.Size([4]))
    """
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
    estimates = direction_estimates(result, prepared.sizes, True, with_components)
    return to_result(average_estimates(estimates), prepared.result_dtype)


class PreparedMutualInformation(NamedTuple):
    """Checked inputs of the sub-batch estimator in the kernel's sample form."""

    tensors: tuple[torch.Tensor, ...]  # noisy, clean, means, stds, query mask, component mask
    plan: Plan
    sizes: list[int]  # queries per direction
    result_dtype: torch.dtype

    def run(self, with_statistics: bool = True) -> Stream:
        """The kernel's per-query results (the statistics of the components when asked)."""
        noisy, clean, means, stds, query_mask, component_mask = self.tensors
        plan = dataclasses.replace(self.plan, with_statistics=with_statistics)
        return stream(noisy, clean, means, stds, query_mask, component_mask, plan)


def prepare_mutual_information(
    means_tensor: torch.Tensor,
    stds_tensor: torch.Tensor,
    noise_mask: torch.Tensor | None,
    clean_input_embeddings: torch.Tensor,
    noisy_input_embeddings: torch.Tensor,
    combine_noise_masks_for_mutual_information_sub_batches: bool,
    *,
    granularity: Granularity,
    symmetric: bool,
    validate_args: bool,
    kernel: Kernel | KernelOptions,
    gather: GatherOptions | None,
) -> PreparedMutualInformation:
    """Every check of the sub-batch estimators, once, then the kernel's inputs and plan."""
    check_granularity(granularity)
    check_bool(
        "",
        "combine_noise_masks_for_mutual_information_sub_batches",
        combine_noise_masks_for_mutual_information_sub_batches,
    )
    check_bool("", "symmetric", symmetric)
    check_bool("", "validate_args", validate_args)
    options, gather = check_options(kernel, gather)
    inputs = {
        "means_tensor": means_tensor,
        "stds_tensor": stds_tensor,
        "clean_input_embeddings": clean_input_embeddings,
        "noisy_input_embeddings": noisy_input_embeddings,
    }
    dtype = check_embeddings(inputs, "clean_input_embeddings")
    batch_size, length = clean_input_embeddings.shape[:2]
    if batch_size < 2 or batch_size % 2:
        raise ValueError(
            "the batch size (dimension 0 of clean_input_embeddings) must be even and at least 2 "
            f"to split into two sub-batches, got {batch_size}"
        )
    query_mask = as_bool_mask(
        "noise_mask",
        noise_mask,
        (batch_size, length),
        clean_input_embeddings.device,
        validate_values=validate_args,
    )
    if combine_noise_masks_for_mutual_information_sub_batches:
        component_mask = query_mask
    else:
        component_mask = torch.ones_like(query_mask)
    rows = batch_size // 2 * (length if granularity == "token" else 1)
    directions = [(0, rows, rows, 2 * rows)]
    if symmetric:
        directions.append((rows, 2 * rows, 0, rows))
    masks = (as_samples(query_mask, granularity), as_samples(component_mask, granularity))
    if validate_args:

        def active() -> dict[str, torch.Tensor]:
            # Rows of clean, means and stds are read as own terms and as components.
            queries, components = active_positions(*masks, directions)
            read = (queries | components).view(batch_size, length)
            return {
                "noisy_input_embeddings": queries.view(batch_size, length),
                "clean_input_embeddings": read,
                "means_tensor": read,
                "stds_tensor": read,
            }

        check_active_values(
            {
                "noisy_input_embeddings": noisy_input_embeddings,
                "clean_input_embeddings": clean_input_embeddings,
                "means_tensor": means_tensor,
                "stds_tensor": stds_tensor,
            },
            ("stds_tensor",),
            active,
        )
    tensors = (
        tuple(
            as_samples(t, granularity)
            for t in (noisy_input_embeddings, clean_input_embeddings, means_tensor, stds_tensor)
        )
        + masks
    )
    if gather is not None and _distributed.world_size(gather.process_group) > 1:
        half = batch_size // 2
        component_halves = [
            (clean_input_embeddings[c], means_tensor[c], stds_tensor[c], component_mask[c])
            for c in (slice(half, None), slice(None, half))[: len(directions)]
        ]
        tensors, directions = _distributed.with_gathered_components(
            tensors,
            component_halves,
            directions,
            granularity=granularity,
            process_group=gather.process_group,
            max_gathered_components=gather.max_gathered_components,
            dtype=compute_dtype(dtype),
        )
    plan = make_plan(directions, True, compute_dtype(dtype), options)
    return PreparedMutualInformation(tensors, plan, [rows] * len(directions), dtype)
