"""Monte Carlo entropy of a Gaussian mixture whose components come from another batch."""

from __future__ import annotations

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
from mi_losses.functional._mixture import to_result, value_with_losses
from mi_losses.functional._pairs import (
    active_positions,
    as_samples,
    check_active_values,
    direction_estimates,
)
from mi_losses.kernels import make_plan, stream
from mi_losses.options import GatherOptions, KernelOptions, check_options
from mi_losses.types import ComponentLossesDict, Estimate, Granularity, Kernel

__all__ = ["gaussian_mixture_entropy", "gaussian_mixture_entropy_estimate"]


def gaussian_mixture_entropy(
    clean_embeddings: torch.Tensor,
    transformed_embeddings: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    mask: torch.Tensor | None,
    losses: ComponentLossesDict | None = None,
    *,
    component_mask: torch.Tensor | None = None,
    granularity: Granularity = "sequence",
    validate_args: bool = True,
    kernel: Kernel | KernelOptions = "auto",
    gather: GatherOptions | None = None,
) -> torch.Tensor:
    r"""Cross-batch Monte Carlo estimate of the entropy of the transformed embeddings, in nats.

    Queries are the transformed embeddings $y_i$ `(M, S, E)` of one batch (query mask `mask`);
    the mixture's components $\mathcal N(c_j, \sigma_j)$, $c_j = x_j + \mu_j$, come from
    another batch: `clean_embeddings`, `means`, `stds` `(N, S, E)`, on the positions of
    `component_mask` (all when `None`). With $L_{ij} = \log \mathcal N(y_i; c_j, \sigma_j)$
    over the positions $P(i, j)$ both masks share,

    $$H = \operatorname*{mean}_i \Big[-\log \frac{1}{|V_i|} \sum_{j \in V_i} e^{L_{ij}}\Big],$$

    an **upper bound** on the entropy of $y$ in expectation (Jensen;
    [the math](math.md#gaussian-mixture-entropy)). The reference
    API's names and order; the other functions use [the glossary](glossary.md).

    Example:
        >>> x, mu, sigma = torch.randn(4, 3, 2), torch.zeros(4, 3, 2), torch.ones(4, 3, 2)
        >>> losses = {}
        >>> h = gaussian_mixture_entropy(x, x + torch.randn(4, 3, 2), mu, sigma, None, losses)
        >>> sorted(losses)[0]
        'gaussian_mixture_log_constants_and_determinant_loss'
    """
    check_losses(losses)
    estimate = _entropy_estimate(
        {
            "means": means,
            "stds": stds,
            "mask": mask,
            "clean_embeddings": clean_embeddings,
            "transformed_embeddings": transformed_embeddings,
        },
        component_mask,
        granularity,
        validate_args,
        kernel,
        gather,
        losses is not None,
    )
    return value_with_losses(estimate, losses)


def gaussian_mixture_entropy_estimate(
    means_tensor: torch.Tensor,
    stds_tensor: torch.Tensor,
    noise_mask: torch.Tensor | None,
    clean_input_embeddings: torch.Tensor,
    noisy_input_embeddings: torch.Tensor,
    *,
    component_mask: torch.Tensor | None = None,
    granularity: Granularity = "sequence",
    validate_args: bool = True,
    kernel: Kernel | KernelOptions = "auto",
    gather: GatherOptions | None = None,
    with_components: bool = True,
) -> Estimate:
    """:func:`gaussian_mixture_entropy` in [the glossary](glossary.md), as an Estimate.

    Components: `means_tensor`, `stds_tensor`, `clean_input_embeddings` `(N, S, E)` on the
    positions of `component_mask` `(N, S)`; queries: `noisy_input_embeddings` `(M, S, E)` on
    the positions of `noise_mask` `(M, S)`. `with_components=False` skips the components.

    Example:
        >>> x, mu, sigma = torch.randn(4, 3, 2), torch.zeros(4, 3, 2), torch.ones(4, 3, 2)
        >>> estimate = gaussian_mixture_entropy_estimate(mu, sigma, None, x, torch.randn(6, 3, 2))
        >>> int(estimate.num_queries), sorted(estimate.components)[0]
        (6, 'gaussian_mixture_log_constants_and_determinant_loss')
    """
    return _entropy_estimate(
        {
            "means_tensor": means_tensor,
            "stds_tensor": stds_tensor,
            "noise_mask": noise_mask,
            "clean_input_embeddings": clean_input_embeddings,
            "noisy_input_embeddings": noisy_input_embeddings,
        },
        component_mask,
        granularity,
        validate_args,
        kernel,
        gather,
        with_components,
    )


def _entropy_estimate(
    arguments: dict[str, torch.Tensor | None],
    component_mask: torch.Tensor | None,
    granularity: Granularity,
    validate_args: bool,
    kernel: Kernel | KernelOptions,
    gather: GatherOptions | None,
    with_components: bool,
) -> Estimate:
    """Every check, once, under the caller's argument names (means, stds, query mask, clean,
    noisy, in that order); then the kernel."""
    check_granularity(granularity)
    check_bool("", "validate_args", validate_args)
    check_bool("", "with_components", with_components)
    options, gather = check_options(kernel, gather)
    means_name, stds_name, mask_name, clean_name, noisy_name = arguments
    named = {name: arguments[name] for name in (means_name, stds_name, clean_name, noisy_name)}
    dtype = check_embeddings(named, clean_name, free_batch=(noisy_name,))  # type: ignore[arg-type]
    means_tensor, stds_tensor, clean_input_embeddings, noisy_input_embeddings = (
        t for t in named.values() if t is not None
    )
    noise_mask = arguments[mask_name]
    device = clean_input_embeddings.device
    query_mask = as_bool_mask(
        mask_name,
        noise_mask,
        noisy_input_embeddings.shape[:2],
        device,
        validate_values=validate_args,
    )
    component_mask = as_bool_mask(
        "component_mask",
        component_mask,
        clean_input_embeddings.shape[:2],
        device,
        validate_values=validate_args,
    )
    masks = (as_samples(query_mask, granularity), as_samples(component_mask, granularity))
    span = (0, masks[0].shape[0], 0, masks[1].shape[0])
    if validate_args:
        shapes = query_mask.shape, component_mask.shape

        def active() -> dict[str, torch.Tensor]:
            queries, components = active_positions(*masks, [span])
            queries, components = queries.view(shapes[0]), components.view(shapes[1])
            return {
                noisy_name: queries,
                clean_name: components,
                means_name: components,
                stds_name: components,
            }

        check_active_values(
            {
                noisy_name: noisy_input_embeddings,
                clean_name: clean_input_embeddings,
                means_name: means_tensor,
                stds_name: stds_tensor,
            },
            (stds_name,),
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
        tensors, (span,) = _distributed.with_gathered_components(
            tensors,
            [(clean_input_embeddings, means_tensor, stds_tensor, component_mask)],
            [span],
            granularity=granularity,
            process_group=gather.process_group,
            max_gathered_components=gather.max_gathered_components,
            dtype=compute_dtype(dtype),
        )
    plan = make_plan([span], False, compute_dtype(dtype), options, with_components)
    noisy, clean, means, stds, query_mask, component_mask = tensors
    result = stream(noisy, clean, means, stds, query_mask, component_mask, plan)
    (estimate,) = direction_estimates(result, [span[1]], False, with_components)
    return to_result(estimate, dtype)
