"""Slow float64 evaluations of MATH.md's known-prior section, for the vocabulary tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def log_density(y: Tensor, centre: Tensor, std: Tensor) -> Tensor:
    """``log N(y ; centre, diag std^2)`` written out, summed over the last axis."""
    return (-0.5 * ((y - centre) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def log_joint(y: Tensor, table: Tensor, prior: Tensor, means: Tensor, stds: Tensor) -> Tensor:
    """``log p_v + log N(y ; W_v + mu_v, sigma_v)`` for every row ``v`` (``-inf`` where ``p_v = 0``)."""
    p = prior / prior.sum()
    scores = []
    for v in range(table.shape[0]):
        if p[v] == 0:
            scores.append(torch.tensor(-math.inf, dtype=y.dtype))
        else:
            scores.append(torch.log(p[v]) + log_density(y, table[v] + means[v], stds[v]))
    return torch.stack(scores)


def vocabulary_terms(
    token_ids: Tensor,
    noisy: Tensor,
    table: Tensor,
    prior: Tensor,
    means: Tensor,
    stds: Tensor,
    mask: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Per active token: ``log N(y ; own)`` and ``log q``, in row-major order, one by one."""
    own, log_q = [], []
    for b in range(noisy.shape[0]):
        for s in range(noisy.shape[1]):
            if mask is not None and not bool(mask[b, s]):
                continue
            t = int(token_ids[b, s])
            y = noisy[b, s]
            own.append(log_density(y, table[t] + means[t], stds[t]))
            log_q.append(torch.logsumexp(log_joint(y, table, prior, means, stds), 0))
    if not own:
        zero = noisy.sum() * 0
        return zero.reshape(1)[:0], zero.reshape(1)[:0]
    return torch.stack(own), torch.stack(log_q)


def vocabulary_mutual_information(*args: Tensor | None) -> Tensor:
    """``mean_i [log N(y_i ; own) - log q_i]``; ``0`` when nothing is active."""
    own, log_q = vocabulary_terms(*args)  # type: ignore[arg-type]
    if own.numel() == 0:
        return own.sum()
    return (own - log_q).mean()


def exact_mutual_information_1d(
    centres: Tensor, stds: Tensor, prior: Tensor, points: int = 200_001
) -> float:
    """``I(X; Y)`` of a discrete input and 1-d Gaussian noise, by the trapezoid rule in float64.

    ``I = sum_v p_v int N(y ; c_v, s_v) log [N(y ; c_v, s_v) / q(y)] dy`` on a grid reaching 12
    standard deviations beyond the outermost centres.
    """
    c, s, p = centres.double(), stds.double(), prior.double() / prior.sum()
    low = float((c - 12 * s).min())
    high = float((c + 12 * s).max())
    y = torch.linspace(low, high, points, dtype=torch.float64)
    log_n = -0.5 * ((y[None] - c[:, None]) / s[:, None]) ** 2 - torch.log(s[:, None])
    log_n = log_n - 0.5 * math.log(2 * math.pi)
    log_q = torch.logsumexp(torch.log(p[:, None]) + log_n, 0)
    integrand = (p[:, None] * log_n.exp() * (log_n - log_q[None])).sum(0)
    return float(torch.trapezoid(integrand, y))
