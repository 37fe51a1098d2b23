"""Sub-batch (leave-one-out) estimate of the mutual information between clean and noisy embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from mi_losses._validation import (
    as_bool_mask,
    check_bool,
    check_embeddings,
    check_granularity,
    compute_dtype,
    result_dtype,
)
from mi_losses.functional import _distributed
from mi_losses.functional._mixture import average_estimates, to_result, value_with_losses
from mi_losses.functional._pairs import (
    DEFAULT_MAX_BLOCK_BYTES,
    active_positions,
    as_samples,
    check_active_values,
    check_block_bytes,
    direction_estimates,
)
from mi_losses.kernels import Plan, Stream, make_plan, stream
from mi_losses.options import KernelOptions
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
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    accuracy_check: bool = True,
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
    Pairs are evaluated as matrix products in blocks by a streaming kernel (running
    ``logsumexp`` per query, blocks prepared again in the backward pass): memory linear in the
    number of samples, forward and backward. Second derivatives are exact
    (``create_graph=True``), ``torch.func.grad``/``jacrev`` apply, and positions outside the
    masks are never read (their gradient is exactly 0).

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
        validate_args: check that every input is finite and ``stds_tensor > 0`` at the
            positions the masks declare active, and the values of a non-bool ``noise_mask``
            (one pass each, one host synchronisation).
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
        max_block_bytes=max_block_bytes,
        accuracy_check=accuracy_check,
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
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    accuracy_check: bool = True,
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
        max_block_bytes=max_block_bytes,
        accuracy_check=accuracy_check,
        gather_components=gather_components,
        process_group=process_group,
        max_gathered_components=max_gathered_components,
    )
    stream = prepared.run()
    estimates = direction_estimates(stream, prepared.sizes, True, with_components)
    return to_result(average_estimates(estimates), prepared.result_dtype)


class PreparedMutualInformation(NamedTuple):
    """Validated inputs of the sub-batch estimator, ready for the streaming kernel."""

    tensors: tuple[torch.Tensor, ...]  # noisy, clean, means, stds, query mask, component mask
    plan: Plan
    sizes: list[int]  # queries per direction
    names: tuple[str, ...]
    validate_args: bool
    result_dtype: torch.dtype

    def run(self) -> Stream:
        """The kernel's per-query results; with ``validate_args``, bad active values raise
        first (one pass over each input)."""
        if self.validate_args:
            query_active, component_active = active_positions(
                self.tensors[4], self.tensors[5], list(self.plan.directions)
            )
            own_active = query_active if self.plan.with_own else torch.zeros_like(query_active)
            extra_rows = component_active.shape[0] - own_active.shape[0]
            if extra_rows:  # components gathered from other ranks follow the local rows
                own_active = torch.cat(
                    [own_active, own_active.new_zeros(extra_rows, *own_active.shape[1:])]
                )
            both = component_active | own_active
            noisy, clean, means, stds = self.tensors[:4]
            check_active_values(
                {
                    self.names[0]: (noisy, query_active),
                    self.names[1]: (clean, both),
                    self.names[2]: (means, both),
                    self.names[3]: (stds, both),
                },
                positive=(self.names[3],),
            )
        noisy, clean, means, stds, query_mask, component_mask = self.tensors
        return stream(noisy, clean, means, stds, query_mask, component_mask, self.plan)


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
    max_block_bytes: int,
    accuracy_check: bool,
    gather_components: bool = False,
    process_group: ProcessGroup | None = None,
    max_gathered_components: int | None = None,
) -> PreparedMutualInformation:
    """Check the arguments of :func:`mutual_information_sub_batch` and plan the kernel."""
    check_granularity(granularity)
    check_bool(
        "",
        "combine_noise_masks_for_mutual_information_sub_batches",
        combine_noise_masks_for_mutual_information_sub_batches,
    )
    check_bool("", "symmetric", symmetric)
    check_bool("", "validate_args", validate_args)
    check_bool("", "accuracy_check", accuracy_check)
    check_block_bytes(max_block_bytes)
    _distributed.check_gather_options(gather_components, max_gathered_components)
    inputs = {
        "means_tensor": means_tensor,
        "stds_tensor": stds_tensor,
        "clean_input_embeddings": clean_input_embeddings,
        "noisy_input_embeddings": noisy_input_embeddings,
    }
    check_embeddings(inputs, "clean_input_embeddings")
    batch_size = clean_input_embeddings.shape[0]
    if batch_size < 2 or batch_size % 2:
        raise ValueError(
            "the batch size (dimension 0 of clean_input_embeddings) must be even and at least 2 "
            f"to split into two sub-batches, got {batch_size}"
        )
    query_mask = as_bool_mask(
        "noise_mask",
        noise_mask,
        clean_input_embeddings.shape[:2],
        clean_input_embeddings.device,
        validate_values=validate_args,
    )
    if combine_noise_masks_for_mutual_information_sub_batches:
        component_mask = query_mask
    else:
        component_mask = torch.ones_like(query_mask)
    rows = batch_size // 2 * (clean_input_embeddings.shape[1] if granularity == "token" else 1)
    directions = [(0, rows, rows, 2 * rows)]
    if symmetric:
        directions.append((rows, 2 * rows, 0, rows))
    tensors = tuple(
        as_samples(t, granularity)
        for t in (
            noisy_input_embeddings,
            clean_input_embeddings,
            means_tensor,
            stds_tensor,
            query_mask,
            component_mask,
        )
    )
    if gather_components and _distributed.world_size(process_group) > 1:
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
            process_group=process_group,
            max_gathered_components=max_gathered_components,
            dtype=compute_dtype(*inputs.values()),
        )
    options = KernelOptions(max_block_bytes=max_block_bytes, accuracy_check=accuracy_check)
    plan = make_plan(directions, True, compute_dtype(*inputs.values()), options)
    return PreparedMutualInformation(
        tensors,
        plan,
        [rows] * len(directions),
        ("noisy_input_embeddings", "clean_input_embeddings", "means_tensor", "stds_tensor"),
        validate_args,
        result_dtype(*inputs.values()),
    )
