"""Sub-batch (leave-one-out) estimate of the mutual information between clean and noisy embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mi_losses import keys
from mi_losses._validation import (
    as_bool_mask,
    check_floating,
    check_granularity,
    check_ndim,
    check_positive,
    check_same_device,
    check_same_shape,
    compute_dtype,
    result_dtype,
)
from mi_losses.functional import _distributed
from mi_losses.functional._mixture import (
    HALF_LOG_TWO_PI,
    as_samples,
    average_estimates,
    mixture_components,
    negative_log_mean_exp,
    pairs,
    query_mean,
    to_result,
    value_with_losses,
)
from mi_losses.types import ComponentLossesDict, Estimate, Granularity

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

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
    gather_components: bool = False,
    process_group: ProcessGroup | None = None,
    max_gathered_components: int | None = None,
) -> torch.Tensor:
    r"""Leave-one-out (L1Out) estimate of ``I(X; Y)`` in nats, from one batch split in halves.

    The batch is split into ``A = [0, B/2)`` (queries: their noisy ``y_i``, centre
    ``c_i = x_i + mu_i`` and ``sigma_i``) and ``A' = [B/2, B)`` (the mixture's components):

    .. math::
        r_{ij} &= \sum_{P(i,j)} \Big[\log\sigma_j - \log\sigma_i
                 + \tfrac12\big(\tfrac{y_i - c_j}{\sigma_j}\big)^2
                 - \tfrac12\big(\tfrac{y_i - c_i}{\sigma_i}\big)^2\Big] \\
        I &= \operatorname{mean}_{i\ \text{valid}} \; -\log \frac{1}{|V_i|}\sum_{j\in V_i} e^{-r_{ij}}

    ``r_ij`` is the log-ratio of the query's own conditional density to component ``j``'s over
    the same positions ``P(i, j)`` (query mask AND component mask; all ``E`` features of two
    active tokens at token granularity). In expectation ``I`` is an **upper bound** on the
    mutual information (Poole et al., 2019), so minimising it is a sound privacy objective;
    ``I = H(Y) - H(Y|X)`` splits exactly into the components written to ``losses``.
    Pairs are evaluated as matrix products: memory ``O((B/2)^2)`` (sequences) or
    ``O((B S / 2)^2)`` (tokens) beyond the inputs, forward and backward.

    Args:
        means_tensor: ``mu``, ``(B, S, E)``; ``B`` even, at least 2.
        stds_tensor: ``sigma > 0``, ``(B, S, E)``.
        noise_mask: ``(B, S)`` bool or 0/1, the positions that were noised; ``None`` = all.
        clean_input_embeddings: ``x``, ``(B, S, E)``.
        noisy_input_embeddings: ``y``, ``(B, S, E)``.
        combine_noise_masks_for_mutual_information_sub_batches: if true the component mask is
            the noise mask of ``A'``; otherwise components use all positions.
        losses: if given, updated with detached scalar components (nats):
            ``gaussian_mixture_mahalanobis_distance_loss``,
            ``gaussian_mixture_log_constants_and_determinant_loss``,
            ``gaussian_mixture_entropy_loss`` (their sum, the estimate of ``H(Y)``),
            ``std_log_loss`` (minus the estimate of ``H(Y|X)``) and
            ``mutual_information_loss`` (``= gaussian_mixture_entropy_loss + std_log_loss = I``).
        granularity: ``"sequence"`` (a sample is a sequence) or ``"token"`` (an active token).
        symmetric: also evaluate with the halves swapped (queries from ``A'``, components from
            ``A``) and average the two estimates and their components: less variance for
            twice the work. A direction without any valid query is left out of the average.
        validate_args: check the values of ``stds_tensor`` and of a non-bool ``noise_mask``.
        gather_components: under data parallelism, evaluate this rank's queries against the
            component halves of all ranks of ``process_group`` (an autograd-aware all-gather;
            ranks may differ in ``B`` and ``S``). The value is this rank's queries' estimate;
            input gradients are those of the sum of the ranks' values, so DDP's averaging
            gives the gradient of their mean. Nothing changes without an initialised process
            group or with one rank. See ``docs/distributed.md``.
        process_group: the ranks to gather over; ``None`` means the default group.
        max_gathered_components: with ``gather_components``, each rank sends at most this
            many components (sequences, or tokens at token granularity), drawn at random:
            bounded memory for more variance. ``None`` sends all.

    Returns:
        Scalar ``I`` in nats, in the input dtype (computed in float32 or better); ``0`` (with a
        zero gradient) when no query has a valid component.

    Raises:
        ValueError: odd batch or batch below 2, shape, dtype or device mismatch, a mask that is
            not ``(B, S)`` bool/0-1, or ``stds_tensor`` not all ``> 0``.

    Example:
        >>> x = torch.randn(8, 4, 2)
        >>> mu, sigma = torch.zeros_like(x), torch.full_like(x, 0.5)
        >>> y = x + mu + sigma * torch.randn_like(x)
        >>> losses = {}
        >>> mi = mutual_information_sub_batch(mu, sigma, None, x, y, losses=losses)
        >>> torch.allclose(mi, losses["gaussian_mixture_entropy_loss"] + losses["std_log_loss"])
        True
    """
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
        with_components=losses is not None,
        gather_components=gather_components,
        process_group=process_group,
        max_gathered_components=max_gathered_components,
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
    with_components: bool = True,
    gather_components: bool = False,
    process_group: ProcessGroup | None = None,
    max_gathered_components: int | None = None,
) -> Estimate:
    """:func:`mutual_information_sub_batch` returning an :class:`~mi_losses.types.Estimate`.

    Same arguments (without ``losses``); the estimate also carries its components and the number
    of valid queries (both directions together when ``symmetric``). ``with_components=False``
    skips the components (``Estimate.components`` is then empty), which saves a little time.
    With ``gather_components`` the value, components and ``num_queries`` are this rank's.
    """
    check_granularity(granularity)
    _distributed.check_gather_options(gather_components, max_gathered_components)
    inputs = {
        "means_tensor": means_tensor,
        "stds_tensor": stds_tensor,
        "clean_input_embeddings": clean_input_embeddings,
        "noisy_input_embeddings": noisy_input_embeddings,
    }
    for name, tensor in inputs.items():
        check_floating(name, tensor)
    check_ndim("clean_input_embeddings", clean_input_embeddings, 3, "(B, S, E)")
    for name, tensor in inputs.items():
        check_same_shape(name, tensor, "clean_input_embeddings", clean_input_embeddings)
    batch_size = clean_input_embeddings.shape[0]
    if batch_size < 2 or batch_size % 2:
        raise ValueError(
            "the batch size (dimension 0 of clean_input_embeddings) must be even and at least 2 "
            f"to split into two sub-batches, got {batch_size}"
        )
    check_same_device(**inputs)
    device = clean_input_embeddings.device
    query_mask = as_bool_mask(
        "noise_mask",
        noise_mask,
        clean_input_embeddings.shape[:2],
        device,
        validate_values=validate_args,
    )
    if validate_args:
        check_positive("stds_tensor", stds_tensor)

    dtype = compute_dtype(*inputs.values())
    stds = stds_tensor.to(dtype)
    noisy = noisy_input_embeddings.to(dtype)
    centres = clean_input_embeddings.to(dtype) + means_tensor.to(dtype)
    if combine_noise_masks_for_mutual_information_sub_batches:
        component_mask = query_mask
    else:
        component_mask = torch.ones_like(query_mask)
    halves = [
        tensor.split(batch_size // 2)
        for tensor in (noisy, centres, stds, query_mask, component_mask)
    ]

    def direction(queries: int, components: int) -> Estimate:
        noisy_, centres_, stds_, query_mask_, component_mask_ = halves
        component_half = (centres_[components], stds_[components], component_mask_[components])
        if gather_components:
            component_half = _distributed.gather_components(
                *component_half,
                granularity=granularity,
                process_group=process_group,
                max_gathered_components=max_gathered_components,
            )
        return _leave_one_out(
            noisy_[queries],
            centres_[queries],
            stds_[queries],
            query_mask_[queries],
            *component_half,
            granularity,
            with_components,
        )

    estimate = direction(0, 1)
    if symmetric:
        estimate = average_estimates([estimate, direction(1, 0)])
    return to_result(estimate, result_dtype(*inputs.values()))


def _leave_one_out(
    queries: torch.Tensor,
    query_centres: torch.Tensor,
    query_stds: torch.Tensor,
    query_mask: torch.Tensor,
    centres: torch.Tensor,
    stds: torch.Tensor,
    component_mask: torch.Tensor,
    granularity: Granularity,
    with_components: bool,
) -> Estimate:
    """One direction of the estimator: queries of one half against components of the other."""
    # -log N(y_i; c_i, sigma_i) per position: the query's own conditional density.
    own = 0.5 * ((queries - query_centres) / query_stds).square() + query_stds.log()
    own = own.sum(-1) + queries.shape[-1] * HALF_LOG_TWO_PI
    pairs_ = pairs(
        as_samples(queries, granularity),
        as_samples(query_mask, granularity),
        as_samples(centres, granularity),
        as_samples(stds, granularity),
        as_samples(component_mask, granularity),
    )
    own = as_samples(own, granularity)
    # r_ij = D_ij + sum_P [log sigma_j - log sigma_i - 0.5 ((y_i - c_i) / sigma_i)^2]
    log_ratio = pairs_.mahalanobis + pairs_.pair_sum(-own, pairs_.component_constants)
    lme = negative_log_mean_exp(-log_ratio, pairs_.valid)
    value = query_mean(lme.value, lme.query_valid)
    per_query = torch.where(lme.query_valid, lme.value, 0.0)
    num_queries = lme.query_valid.sum()
    if not with_components:
        return Estimate(value, {}, num_queries, per_query)

    mahalanobis, log_constants = mixture_components(pairs_, lme)
    with torch.no_grad():
        std_log = -query_mean(pairs_.weighted_pair_sum(lme.weights, own, None), lme.query_valid)
    return Estimate(
        value=value,
        components={
            keys.MAHALANOBIS: mahalanobis,
            keys.LOG_CONSTANTS: log_constants,
            keys.MIXTURE_ENTROPY: mahalanobis + log_constants,
            keys.STD_LOG: std_log.detach(),
            keys.MUTUAL_INFORMATION: value.detach(),
        },
        num_queries=num_queries,
        per_query=per_query,
    )
