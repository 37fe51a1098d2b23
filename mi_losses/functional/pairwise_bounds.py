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
from mi_losses.types import Granularity

__all__ = [
    "PairwiseBounds",
    "kolchinsky_tracey_entropy_bounds",
    "kolchinsky_tracey_mutual_information_bounds",
]

_HALF_LOG_TWO_PI_E = 0.5 * math.log(2.0 * math.pi * math.e)
_BLOCK_ELEMENTS = 1 << 22  # elements of one (block, N, S, E) Bhattacharyya block


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
) -> PairwiseBounds:
    r"""Bounds on the entropy of the batch's empirical mixture $\frac1N\sum_j \mathcal N(c_j, \sigma_j)$.

    $$H_D = \frac1N\sum_i H(p_i) - \frac1N\sum_i \log\frac{1}{|V_i|}\sum_{j\in V_i} e^{-D(p_i\|p_j)}$$

    `upper` uses $D = \mathrm{KL}$ (matrix products, memory $O(N^2)$), `lower` the
    Bhattacharyya distance (blocks of samples, recomputed in the backward pass), Kolchinsky &
    Tracey (2017). This bounds the mixture over **this batch's samples** (the empirical
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
    )
    return PairwiseBounds(lower, upper)


def _bounds(
    means_tensor: torch.Tensor,
    stds_tensor: torch.Tensor,
    noise_mask: torch.Tensor | None,
    clean_input_embeddings: torch.Tensor,
    granularity: Granularity,
    validate_args: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean_i H(p_i), I_Bhattacharyya, I_KL)`` in the result dtype."""
    check_granularity(granularity)
    inputs = {
        "means_tensor": means_tensor,
        "stds_tensor": stds_tensor,
        "clean_input_embeddings": clean_input_embeddings,
    }
    check_bool("", "validate_args", validate_args)
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
    kl = _kl(centres, stds, log_stds, a)
    bhattacharyya = _bhattacharyya(centres, stds, log_stds, a)
    return (
        entropy.mean().to(out),
        _negative_log_mean_exp(-bhattacharyya, valid).mean().to(out),
        _negative_log_mean_exp(-kl, valid).mean().to(out),
    )


def _kl(
    centres: torch.Tensor, stds: torch.Tensor, log_stds: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """``KL(p_i || p_j)`` over ``P(i, j)``, ``(N, N)``, from matrix products only."""
    n = centres.shape[0]
    with torch.no_grad():
        weight = a.unsqueeze(-1)
        reference = (weight * centres).sum(0) / weight.sum(0).clamp_min(1.0)
    c = (centres - reference) * a.unsqueeze(-1)
    precision = a.unsqueeze(-1) / stds.square()
    flat = c.reshape(n, -1)
    # sum_e [log s_j - log s_i - 1/2] per shared position, as [a u, a] . [a, a v]^T.
    own = -(log_stds.sum(-1) + 0.5 * stds.shape[-1])
    constants = torch.cat([a * own, a], 1) @ torch.cat([a, a * log_stds.sum(-1)], 1).T
    spread = (stds.square() * a.unsqueeze(-1)).reshape(n, -1) @ precision.reshape(n, -1).T
    quadratic = flat.square() @ precision.reshape(n, -1).T
    quadratic = quadratic - 2.0 * flat @ (c * precision).reshape(n, -1).T
    quadratic = quadratic + a @ (c.square() * precision).sum(-1).T
    return constants + 0.5 * (spread + quadratic)


def _bhattacharyya(
    centres: torch.Tensor, stds: torch.Tensor, log_stds: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """Bhattacharyya distances over ``P(i, j)``, ``(N, N)``, in blocks of rows."""
    n = centres.shape[0]
    variances = stds.square()
    block = max(1, _BLOCK_ELEMENTS // max(1, n * centres[0].numel()))
    rows = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        args = (centres[start:stop], variances[start:stop], a[start:stop], centres, variances, a)
        if torch.is_grad_enabled():
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
