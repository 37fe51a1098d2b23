"""Kolchinsky–Tracey pairwise-distance bounds on the entropy and MI of a batch's empirical channel.

For the equal-weight mixture of the batch's conditional Gaussians,
``Y ~ (1/N) sum_j p_j``, ``p_j = N(c_j, diag sigma_j^2)``, ``c_j = x_j + mu_j``:

    H_D = (1/N) sum_i H(p_i) - (1/N) sum_i log (1/N) sum_j exp(-D(p_i || p_j))

is an upper bound on ``H(Y)`` with ``D = KL`` and a lower bound with ``D = Bhattacharyya``
(Kolchinsky & Tracey, 2017). Subtracting ``H(Y | X) = (1/N) sum_i H(p_i)`` bounds the mutual
information of the **empirical channel**: ``X`` uniform over the batch's ``N`` samples and
``Y | X = j ~ p_j``. Both bounds are deterministic (no noisy sample is drawn) and never exceed
``log N`` nats of MI. Relation to the population MI ``I`` of the layer: entropy is concave and
the empirical mixture averages to the population mixture, so ``E[I_empirical] <= I``; the
Bhattacharyya (lower) bound is therefore also a lower bound on ``I`` in expectation, while the
KL ("upper") bound is **not** an upper bound on ``I`` (it reads at most ``log N``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from mi_losses._validation import (
    as_bool_mask,
    check_bool,
    check_embeddings,
    check_finite_at_active,
    check_granularity,
    check_positive_at_active,
    compute_dtype,
)
from mi_losses.functional._pairs import direction_estimates
from mi_losses.kernels import make_plan, stream
from mi_losses.kernels.directions import block_rows
from mi_losses.kernels.dispatch import transformed
from mi_losses.options import KernelOptions, check_options
from mi_losses.types import Granularity, Kernel

__all__ = [
    "PairwiseBounds",
    "kolchinsky_tracey_entropy_bounds",
    "kolchinsky_tracey_mutual_information_bounds",
]

_HALF_LOG_TWO_PI_E = 0.5 * math.log(2.0 * math.pi * math.e)


class PairwiseBounds(NamedTuple):
    """A lower and an upper bound, scalars in nats (Bhattacharyya and KL respectively)."""

    lower: torch.Tensor
    upper: torch.Tensor


def kolchinsky_tracey_entropy_bounds(
    means_tensor: torch.Tensor,
    stds_tensor: torch.Tensor,
    noise_mask: torch.Tensor | None,
    clean_input_embeddings: torch.Tensor,
    *,
    granularity: Granularity = "sequence",
    validate_args: bool = True,
    kernel: Kernel | KernelOptions = "auto",
) -> PairwiseBounds:
    r"""Bounds on the entropy of the batch's empirical mixture $\frac1N\sum_j \mathcal N(c_j, \sigma_j)$.

    $$H_D = \frac1N\sum_i H(p_i) - \frac1N\sum_i \log\frac{1}{|V_i|}\sum_{j\in V_i} e^{-D(p_i\|p_j)}$$

    `upper` uses $D = \mathrm{KL}$ (the pairwise kernel's scores: matrix products, memory
    linear in $N$, its float64 fallback; `kernel` picks the path), `lower` the Bhattacharyya
    distance (blocks of samples, recomputed in the backward pass; no matrix-product form, so
    the kernel cannot run it; under `torch.func` transforms the blocks are kept, not
    recomputed), Kolchinsky & Tracey (2017). This bounds the mixture over **this batch's samples** (the empirical
    channel), not the layer's output distribution; masks follow
    [the pair active sets](math.md#pair-active-sets). Arguments: [the glossary](glossary.md);
    returns :class:`PairwiseBounds` in nats, differentiable twice, `0` when nothing is active.

    Example:
        >>> x = torch.randn(16, 1, 2)
        >>> sigma = torch.full_like(x, 0.5)
        >>> lower, upper = kolchinsky_tracey_entropy_bounds(torch.zeros_like(x), sigma, None, x)
        >>> bool(lower <= upper)
        True
    """
    conditional, lower, upper = _bounds(
        means_tensor,
        stds_tensor,
        noise_mask,
        clean_input_embeddings,
        granularity,
        validate_args,
        kernel,
    )
    return PairwiseBounds(conditional + lower, conditional + upper)


def kolchinsky_tracey_mutual_information_bounds(
    means_tensor: torch.Tensor,
    stds_tensor: torch.Tensor,
    noise_mask: torch.Tensor | None,
    clean_input_embeddings: torch.Tensor,
    *,
    granularity: Granularity = "sequence",
    validate_args: bool = True,
    kernel: Kernel | KernelOptions = "auto",
) -> PairwiseBounds:
    r"""Bounds on the MI of the batch's **empirical channel**, ``I_D = H_D - (1/N) sum_i H(p_i)``.

    $$I_D = -\frac1N\sum_i \log\frac{1}{|V_i|}\sum_{j\in V_i} e^{-D(p_i\|p_j)}$$

    with ``D = Bhattacharyya`` (``lower``) and ``D = KL`` (``upper``), as in
    :func:`kolchinsky_tracey_entropy_bounds` (same arguments and conventions). The truth these
    bound is ``I(X; Y)`` for ``X`` **uniform over the batch's samples** and ``Y | X = j ~
    N(c_j, sigma_j)``: at most ``log N``. It equals the layer's population MI only in the limit
    where that MI is far below ``log N``; with little noise the "upper" bound reads about
    ``log N`` whatever the population MI is (8 nats of true MI, ``N = 512``: 6.2). Use it to
    say how well this batch's samples can be told apart, not as a privacy guarantee. Because
    ``E[I_empirical] <= I`` (concavity of entropy), ``lower`` is also a lower bound on the
    population MI in expectation; ``upper`` bounds nothing about the population.

    Returns:
        :class:`PairwiseBounds` ``(lower, upper)`` in nats, each in ``[0, log N]``.

    Example:
        >>> x = torch.randn(16, 1, 2)
        >>> mu, sigma = torch.zeros_like(x), torch.full_like(x, 0.5)
        >>> lower, upper = kolchinsky_tracey_mutual_information_bounds(mu, sigma, None, x)
        >>> bool(0 <= lower <= upper <= math.log(16) + 1e-6)
        True
    """
    _, lower, upper = _bounds(
        means_tensor,
        stds_tensor,
        noise_mask,
        clean_input_embeddings,
        granularity,
        validate_args,
        kernel,
    )
    return PairwiseBounds(lower, upper)


def _bounds(
    means_tensor: torch.Tensor,
    stds_tensor: torch.Tensor,
    noise_mask: torch.Tensor | None,
    clean_input_embeddings: torch.Tensor,
    granularity: Granularity,
    validate_args: bool,
    kernel: Kernel | KernelOptions,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean_i H(p_i), I_Bhattacharyya, I_KL)`` in the result dtype."""
    check_granularity(granularity)
    inputs = {
        "means_tensor": means_tensor,
        "stds_tensor": stds_tensor,
        "clean_input_embeddings": clean_input_embeddings,
    }
    check_bool("", "validate_args", validate_args)
    options, _ = check_options(kernel, None)
    out = check_embeddings(inputs, "clean_input_embeddings")
    mask = as_bool_mask(
        "noise_mask",
        noise_mask,
        clean_input_embeddings.shape[:2],
        clean_input_embeddings.device,
        validate_values=validate_args,
    )
    active = mask.unsqueeze(-1)
    if validate_args:
        check_finite_at_active("clean_input_embeddings", clean_input_embeddings, mask)
        check_finite_at_active("means_tensor", means_tensor, mask)
        check_positive_at_active("stds_tensor", stds_tensor, mask)
    dtype = compute_dtype(out)
    # Inactive positions are replaced by safe placeholders before any arithmetic.
    centres = torch.where(active, clean_input_embeddings.to(dtype) + means_tensor.to(dtype), 0.0)
    stds = torch.where(active, stds_tensor.to(dtype), 1.0)
    if granularity == "token":
        centres, stds = centres[mask].unsqueeze(1), stds[mask].unsqueeze(1)
        mask = mask.new_ones(centres.shape[:2])
    else:
        keep = mask.any(-1)
        centres, stds, mask = centres[keep], stds[keep], mask[keep]
    a = mask.to(dtype)
    log_stds = stds.log()
    entropy = (a * (log_stds.sum(-1) + stds.shape[-1] * _HALF_LOG_TWO_PI_E)).sum(-1)
    if centres.shape[0] == 0:
        zero = centres.sum() + stds.sum()
        return zero.to(out), zero.to(out), zero.to(out)
    valid = (a @ a.T) > 0
    bhattacharyya = _bhattacharyya(centres, stds, log_stds, a, options.max_block_bytes)
    return (
        entropy.mean().to(out),
        _negative_log_mean_exp(-bhattacharyya, valid).mean().to(out),
        _kl_bound(centres, stds, mask, dtype, options).to(out),
    )


def _kl_bound(
    centres: torch.Tensor,
    stds: torch.Tensor,
    mask: torch.Tensor,
    dtype: torch.dtype,
    options: KernelOptions,
) -> torch.Tensor:
    """``mean_i -log (1/|V_i|) sum_{j in V_i} exp(-KL(p_i || p_j))`` through the pairwise kernel.

    Per shared position, ``KL = sum_e [0.5 (c_i - c_j)^2 / s_j^2 + 0.5 s_i^2 / s_j^2 + log s_j
    - log s_i - 1/2]`` is the kernel's mutual-information score ``-z_ij`` (queries against their
    own batch, own term included) on ``3E`` features: queries ``[c, s, 0]``, component centres
    ``[c, 0, 0]`` and stds ``[s, s, 1/s]``. The second block gives ``s_i^2 / s_j^2`` and, as the
    own term, ``1/2 + log s_i``; the third (zero distance) turns ``2 log s_j`` into ``log s_j``
    and ``2 log s_i`` into ``log s_i``; the ``2 pi`` constants cancel.
    """
    zero = torch.zeros_like(centres)
    queries = torch.cat([centres, stds, zero], -1)
    clean = torch.cat([centres, zero, zero], -1)
    spreads = torch.cat([stds, stds, stds.reciprocal()], -1)
    n = centres.shape[0]
    plan = make_plan(
        [(0, n, 0, n)], with_own=True, dtype=dtype, options=options, with_statistics=False
    )
    result = stream(queries, clean, zero.new_zeros(()).expand_as(clean), spreads, mask, mask, plan)
    (estimate,) = direction_estimates(result, [n], with_own=True, with_components=False)
    return estimate.value


def _bhattacharyya(
    centres: torch.Tensor,
    stds: torch.Tensor,
    log_stds: torch.Tensor,
    a: torch.Tensor,
    budget: int,
) -> torch.Tensor:
    """Bhattacharyya distances over ``P(i, j)``, ``(N, N)``, in blocks of rows (recomputed in
    the backward pass) of at most ``budget`` bytes.

    The pairwise kernel cannot run it: ``(c_i - c_j)^2 / (s_i^2 + s_j^2)`` is no sum of
    products of per-sample factors (its denominator mixes both samples), so it is no matrix
    product; this is the library's one direct ``(block, N, S, E)`` evaluation.
    """
    n = centres.shape[0]
    variances = stds.square()
    rows = []
    row_bytes = 4 * n * centres[0].numel() * centres.element_size()  # about four temporaries
    # Checkpoints need saved-tensor hooks, which torch.func transforms do not support.
    recompute = torch.is_grad_enabled() and not transformed((centres, stds))
    for start, stop in block_rows(n, row_bytes, budget):
        args = (centres[start:stop], variances[start:stop], a[start:stop], centres, variances, a)
        if recompute:
            rows.append(checkpoint(_bhattacharyya_block, *args, use_reentrant=False))
        else:
            rows.append(_bhattacharyya_block(*args))
    # The separable part -1/2 sum_P (log s_i + log s_j), as pair sums.
    half_logs = -0.5 * log_stds.sum(-1)
    separable = torch.cat([a * half_logs, a], 1) @ torch.cat([a, a * half_logs], 1).T
    joint = torch.cat(rows) if rows else separable
    return joint + separable


def _bhattacharyya_block(
    centres_i: torch.Tensor,
    variances_i: torch.Tensor,
    a_i: torch.Tensor,
    centres: torch.Tensor,
    variances: torch.Tensor,
    a: torch.Tensor,
) -> torch.Tensor:
    """``sum_P [(c_i - c_j)^2 / (4 (v_i + v_j)) + 1/2 log((v_i + v_j) / 2)]``, ``(block, N)``."""
    total = variances_i.unsqueeze(1) + variances.unsqueeze(0)
    difference = centres_i.unsqueeze(1) - centres.unsqueeze(0)
    terms = (0.25 * difference.square() / total + 0.5 * (0.5 * total).log()).sum(-1)
    shared = a_i.unsqueeze(1) * a.unsqueeze(0)
    return (shared * terms).sum(-1)


def _negative_log_mean_exp(z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``-log (1/|V_i|) sum_{j in V_i} exp(z_ij)`` per row, in plain (twice differentiable) ops."""
    row_valid = valid.any(-1, keepdim=True)
    z = torch.where(valid, z, -math.inf)
    z = torch.where(row_valid, z, 0.0)
    count = valid.sum(-1).clamp_min(1).to(z.dtype)
    return count.log() - torch.logsumexp(z, dim=-1)
