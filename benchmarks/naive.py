"""The naive reference: the sub-batch estimate written the obvious way, with broadcasting.

It builds every ``(M, N, S, E)`` difference (sequence granularity) or every ``(M, N, E)``
difference between active tokens (token granularity), so its memory is ``O(M N S E)``: the cost
the library's matrix-product kernel avoids (docs/math.md#performance). ``tests/apps/test_benchmarks.py``
checks it against ``tests/reference.py``.
"""

from __future__ import annotations

import torch

from benchmarks.grids import Case

# Peak memory of the naive forward + backward, in units of one float32 (M, N, S, E) tensor
# (measured on this implementation: about 6 of them are alive at once during the backward).
NAIVE_PEAK_INTERMEDIATES = 7


def naive_mutual_information_sub_batch(
    means_tensor: torch.Tensor,
    stds_tensor: torch.Tensor,
    noise_mask: torch.Tensor,
    clean_input_embeddings: torch.Tensor,
    noisy_input_embeddings: torch.Tensor,
    granularity: str = "sequence",
) -> torch.Tensor:
    """The sub-batch estimate of docs/math.md, written the obvious way with broadcasting.

    Queries are the first half of the batch, components the second half; the component mask is
    the second half's noise mask. Computes in float32 (or float64 for float64 inputs) and returns
    a float32/float64 scalar in nats.
    """
    compute = torch.promote_types(means_tensor.dtype, torch.float32)
    means, stds, clean, noisy = (
        t.to(compute)
        for t in (means_tensor, stds_tensor, clean_input_embeddings, noisy_input_embeddings)
    )
    mask = noise_mask.bool()
    half = means.shape[0] // 2
    y, c_q, s_q = noisy[:half], (clean + means)[:half], stds[:half]
    c, s = (clean + means)[half:], stds[half:]
    q_mask, c_mask = mask[:half], mask[half:]
    if granularity == "token":  # every active token is a sample; all pairs are valid
        y, c_q, s_q = y[q_mask], c_q[q_mask], s_q[q_mask]  # (M, E)
        c, s = c[c_mask], s[c_mask]  # (N, E)
        own = 0.5 * ((y - c_q) / s_q) ** 2 + torch.log(s_q)  # (M, E)
        other = 0.5 * ((y[:, None] - c[None]) / s[None]) ** 2 + torch.log(s)[None]  # (M, N, E)
        log_ratio = (other - own[:, None]).sum(-1)  # (M, N)
        valid = torch.ones_like(log_ratio, dtype=torch.bool)
    else:
        own = 0.5 * ((y - c_q) / s_q) ** 2 + torch.log(s_q)  # (M, S, E)
        other = 0.5 * ((y[:, None] - c[None]) / s[None]) ** 2 + torch.log(s)[None]  # (M, N, S, E)
        per_position = (other - own[:, None]).sum(-1)  # (M, N, S)
        pair_mask = q_mask[:, None, :] & c_mask[None, :, :]  # (M, N, S)
        log_ratio = (per_position * pair_mask).sum(-1)  # (M, N)
        valid = pair_mask.any(-1)
    num_valid = valid.sum(-1)
    valid_query = num_valid > 0
    if not bool(valid_query.any()):
        return log_ratio.sum() * 0.0
    logits = (-log_ratio).masked_fill(~valid, float("-inf"))[valid_query]
    per_query = -(torch.logsumexp(logits, dim=-1) - torch.log(num_valid[valid_query].to(compute)))
    return per_query.mean()


def naive_memory_estimate(case: Case, m: int, n: int) -> int:
    """Bytes the naive forward + backward needs at its peak (float32 or float64 compute)."""
    k = case.seq * case.emb if case.granularity == "sequence" else case.emb
    bytes_per = 8 if case.dtype == "float64" else 4
    return NAIVE_PEAK_INTERMEDIATES * m * n * k * bytes_per
