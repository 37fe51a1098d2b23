"""Monte Carlo entropy of a Gaussian mixture whose components come from another batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mi_losses import keys
from mi_losses._validation import (
    _shape,
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
    as_samples,
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
    (Jensen). Pairs are evaluated as matrix products: memory ``O(M N)`` beyond the inputs.

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
        validate_args: check the values of ``stds`` and of non-bool masks (one pass each).
        gather_components: under data parallelism, evaluate this rank's queries against the
            components of all ranks of ``process_group`` (an autograd-aware all-gather; ranks
            may differ in ``N`` and ``S``). The value is this rank's queries' estimate; input
            gradients are those of the sum of the ranks' values. Nothing changes without an
            initialised process group or with one rank. See ``docs/distributed.md``.
        process_group: the ranks to gather over; ``None`` means the default group.
        max_gathered_components: with ``gather_components``, each rank sends at most this
            many components (sequences, or tokens at token granularity), drawn at random:
            bounded memory for more variance. ``None`` sends all.

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
    with_components: bool = True,
    gather_components: bool = False,
    process_group: ProcessGroup | None = None,
    max_gathered_components: int | None = None,
) -> Estimate:
    """:func:`gaussian_mixture_entropy` returning an :class:`~mi_losses.types.Estimate`.

    Same arguments (without ``losses``); the estimate also carries its components and the number
    of valid queries, the weight to aggregate it with. ``with_components=False`` skips the
    components (``Estimate.components`` is then empty), which saves a little time.
    With ``gather_components`` the value, components and ``num_queries`` are this rank's.
    """
    check_granularity(granularity)
    _distributed.check_gather_options(gather_components, max_gathered_components)
    for name, tensor in (
        ("clean_embeddings", clean_embeddings),
        ("transformed_embeddings", transformed_embeddings),
        ("means", means),
        ("stds", stds),
    ):
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
    check_same_device(
        clean_embeddings=clean_embeddings,
        transformed_embeddings=transformed_embeddings,
        means=means,
        stds=stds,
    )
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
    if validate_args:
        check_positive("stds", stds)

    inputs = (clean_embeddings, transformed_embeddings, means, stds)
    dtype = compute_dtype(*inputs)
    component_half = (clean_embeddings.to(dtype) + means.to(dtype), stds.to(dtype), component_mask)
    if gather_components:
        component_half = _distributed.gather_components(
            *component_half,
            granularity=granularity,
            process_group=process_group,
            max_gathered_components=max_gathered_components,
        )
    centres, component_stds, component_mask = component_half
    pairs_ = pairs(
        as_samples(transformed_embeddings.to(dtype), granularity),
        as_samples(query_mask, granularity),
        as_samples(centres, granularity),
        as_samples(component_stds, granularity),
        as_samples(component_mask, granularity),
    )
    log_density = -(pairs_.mahalanobis + pairs_.pair_sum(None, pairs_.component_constants))
    lme = negative_log_mean_exp(log_density, pairs_.valid)
    components = {}
    if with_components:
        mahalanobis, log_constants = mixture_components(pairs_, lme)
        components = {
            keys.MAHALANOBIS: mahalanobis,
            keys.LOG_CONSTANTS: log_constants,
        }
    estimate = Estimate(
        value=query_mean(lme.value, lme.query_valid),
        components=components,
        num_queries=lme.query_valid.sum(),
        per_query=torch.where(lme.query_valid, lme.value, 0.0),
    )
    return to_result(estimate, result_dtype(*inputs))
