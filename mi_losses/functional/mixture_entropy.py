"""Monte Carlo entropy of a Gaussian mixture whose components come from another batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mi_losses._validation import (
    _shape,
    as_bool_mask,
    check_bool,
    check_floating,
    check_granularity,
    check_ndim,
    check_same_device,
    check_same_shape,
    compute_dtype,
    result_dtype,
)
from mi_losses.functional import _distributed
from mi_losses.functional._mixture import to_result, value_with_losses
from mi_losses.functional._pairs import (
    DEFAULT_MAX_BLOCK_BYTES,
    active_positions,
    as_samples,
    check_active_values,
    check_block_bytes,
    direction_estimates,
)
from mi_losses.kernels import make_plan, stream
from mi_losses.options import KernelOptions
from mi_losses.types import ComponentLossesDict, Estimate, Granularity

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

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
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    accuracy_check: bool = True,
    gather_components: bool = False,
    process_group: ProcessGroup | None = None,
    max_gathered_components: int | None = None,
) -> torch.Tensor:
    r"""Cross-batch Monte Carlo estimate of the entropy of the transformed embeddings, in nats.

    Queries are the transformed embeddings ``y_i`` of one batch; the mixture's components are
    the diagonal Gaussians ``N(c_j, sigma_j^2)``, ``c_j = x_j + mu_j``, of a *different* batch:

    .. math::
        L_{ij} &= \log \mathcal N(y_i; c_j, \sigma_j) \text{ over } P(i, j)
                = -\sum_P \Big[\tfrac12 \big(\tfrac{y_i - c_j}{\sigma_j}\big)^2 + \log\sigma_j\Big]
                  - \tfrac{|P(i,j)|}{2}\log 2\pi \\
        H &= \operatorname{mean}_{i\ \text{valid}} \; -\log \frac{1}{|V_i|} \sum_{j \in V_i} e^{L_{ij}}

    ``P(i, j)`` is ``mask_i AND component_mask_j`` (sequence granularity; ``|P|`` counts active
    scalar elements) or all ``E`` features of two active tokens (token granularity). In
    expectation ``H`` is an **upper bound** on the entropy of the transformed embeddings
    (Jensen). Pairs are evaluated as matrix products in blocks by a streaming kernel: memory
    linear in ``M + N``; second derivatives are exact and masked positions are never read.

    Args:
        clean_embeddings: ``x`` of the component batch, ``(N, S, E)``.
        transformed_embeddings: ``y`` of the query batch, ``(M, S, E)``.
        means: ``mu`` of the component batch, ``(N, S, E)``.
        stds: ``sigma > 0`` of the component batch, ``(N, S, E)``.
        mask: query mask ``(M, S)``, bool or 0/1; ``None`` means all positions.
        losses: if given, updated with the detached components
            ``gaussian_mixture_mahalanobis_distance_loss`` and
            ``gaussian_mixture_log_constants_and_determinant_loss`` (nats); they sum to ``H``.
        component_mask: ``(N, S)``; ``None`` (default) means all positions.
        granularity: ``"sequence"`` (a sample is a sequence) or ``"token"`` (an active token).
        validate_args: check that every input is finite and ``stds > 0`` at the positions
            the masks declare active, and the values of non-bool masks (one pass each, one
            host synchronisation).
        max_block_bytes: memory budget of the streaming kernel's blocks (the pair scores and
            factors of one block of queries and components), default 256 MiB. When all pair
            scores fit in half of it (the usual case at sequence granularity) they are kept for
            the backward pass, else each block is recomputed there. Memory beyond the inputs
            and their gradients is linear in the number of samples plus this budget; results
            do not depend on it beyond rounding.
        accuracy_check: check the rounding of the expanded squares (one reduction per block,
            one host synchronisation per call); where some pair would lose more than the
            tolerance of docs/math.md#numerics, the pass is redone in float64 with the flagged pairs evaluated from their
            differences. ``False`` skips the check and its synchronisation (skipped
            automatically under ``torch.compile``; with ``validate_args=False`` too the call
            never synchronises and ``torch.compile(fullgraph=True)`` traces it).
        gather_components: under data parallelism, evaluate this rank's queries against the
            components of all ranks of ``process_group`` (an autograd-aware all-gather); the
            value is this rank's queries' estimate. Nothing changes without an initialised
            process group or with one rank. See ``docs/distributed.md``.
        process_group: the ranks to gather over; ``None`` means the default group.
        max_gathered_components: with ``gather_components``, each rank sends at most this
            many components, drawn at random; ``None`` sends all.

    Returns:
        Scalar ``H`` in nats, in the input dtype (computed in float32 or better); ``0`` when
        no query has a valid component.

    Example:
        >>> x, mu, sigma = torch.randn(4, 3, 2), torch.zeros(4, 3, 2), torch.ones(4, 3, 2)
        >>> y = torch.randn(6, 3, 2)
        >>> losses = {}
        >>> h = gaussian_mixture_entropy(x, y, mu, sigma, None, losses)
        >>> sorted(losses)
        ['gaussian_mixture_log_constants_and_determinant_loss', 'gaussian_mixture_mahalanobis_distance_loss']
    """
    estimate = gaussian_mixture_entropy_estimate(
        clean_embeddings,
        transformed_embeddings,
        means,
        stds,
        mask,
        component_mask=component_mask,
        granularity=granularity,
        validate_args=validate_args,
        max_block_bytes=max_block_bytes,
        accuracy_check=accuracy_check,
        with_components=losses is not None,
        gather_components=gather_components,
        process_group=process_group,
        max_gathered_components=max_gathered_components,
    )
    return value_with_losses(estimate, losses)


def gaussian_mixture_entropy_estimate(
    clean_embeddings: torch.Tensor,
    transformed_embeddings: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    component_mask: torch.Tensor | None = None,
    granularity: Granularity = "sequence",
    validate_args: bool = True,
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    accuracy_check: bool = True,
    with_components: bool = True,
    gather_components: bool = False,
    process_group: ProcessGroup | None = None,
    max_gathered_components: int | None = None,
) -> Estimate:
    """:func:`gaussian_mixture_entropy` returning an :class:`~mi_losses.types.Estimate`.

    Same arguments (without ``losses``); the estimate also carries its components and the number
    of valid queries, the weight to aggregate it with. ``with_components=False`` skips the
    components (``Estimate.components`` is then empty), which saves a little time.

    Example:
        >>> x, mu, sigma = torch.randn(4, 3, 2), torch.zeros(4, 3, 2), torch.ones(4, 3, 2)
        >>> estimate = gaussian_mixture_entropy_estimate(x, torch.randn(6, 3, 2), mu, sigma)
        >>> int(estimate.num_queries), sorted(estimate.components)[0]
        (6, 'gaussian_mixture_log_constants_and_determinant_loss')
    """
    check_granularity(granularity)
    check_bool("", "validate_args", validate_args)
    check_bool("", "accuracy_check", accuracy_check)
    check_bool("", "with_components", with_components)
    check_block_bytes(max_block_bytes)
    _distributed.check_gather_options(gather_components, max_gathered_components)
    named = {
        "clean_embeddings": clean_embeddings,
        "transformed_embeddings": transformed_embeddings,
        "means": means,
        "stds": stds,
    }
    for name, tensor in named.items():
        check_floating(name, tensor)
        check_ndim(name, tensor, 3, "(batch, S, E)")
    check_same_shape("means", means, "clean_embeddings", clean_embeddings)
    check_same_shape("stds", stds, "clean_embeddings", clean_embeddings)
    if transformed_embeddings.shape[1:] != clean_embeddings.shape[1:]:
        s, e = clean_embeddings.shape[1:]
        raise ValueError(
            f"transformed_embeddings must have shape (M, {s}, {e}) to match clean_embeddings "
            f"{_shape(clean_embeddings.shape)}, got {_shape(transformed_embeddings.shape)}"
        )
    check_same_device(**named)
    device = clean_embeddings.device
    query_mask = as_bool_mask(
        "mask", mask, transformed_embeddings.shape[:2], device, validate_values=validate_args
    )
    component_mask = as_bool_mask(
        "component_mask",
        component_mask,
        clean_embeddings.shape[:2],
        device,
        validate_values=validate_args,
    )
    tensors: tuple[torch.Tensor, ...] = (
        as_samples(transformed_embeddings, granularity),
        as_samples(clean_embeddings, granularity),
        as_samples(means, granularity),
        as_samples(stds, granularity),
        as_samples(query_mask, granularity),
        as_samples(component_mask, granularity),
    )
    span = (0, tensors[0].shape[0], 0, tensors[1].shape[0])
    dtype = compute_dtype(*named.values())
    options = KernelOptions(max_block_bytes=max_block_bytes, accuracy_check=accuracy_check)
    plan = make_plan([span], False, dtype, options)
    if validate_args:
        query_active, component_active = active_positions(tensors[4], tensors[5], [span])
        check_active_values(
            {
                "transformed_embeddings": (tensors[0], query_active),
                "clean_embeddings": (tensors[1], component_active),
                "means": (tensors[2], component_active),
                "stds": (tensors[3], component_active),
            },
            positive=("stds",),
        )
    if gather_components and _distributed.world_size(process_group) > 1:
        tensors, (span,) = _distributed.with_gathered_components(
            tensors,
            [(clean_embeddings, means, stds, component_mask)],
            [span],
            granularity=granularity,
            process_group=process_group,
            max_gathered_components=max_gathered_components,
            dtype=dtype,
        )
        plan = make_plan([span], False, dtype, options)
    noisy, clean, means_, stds_, query_mask_, component_mask_ = tensors
    result = stream(noisy, clean, means_, stds_, query_mask_, component_mask_, plan)
    (estimate,) = direction_estimates(result, [span[1]], False, with_components)
    return to_result(estimate, result_dtype(*named.values()))
