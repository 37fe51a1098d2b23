"""A direct, slow and obvious float64 evaluation of docs/math.md, written from the formulas alone.

Nothing here is clever: pairwise terms are broadcast to ``(M, N, S, E)``, valid pairs are
selected with boolean indexing, and the reduction over components is a Python loop over the
queries. Token granularity is reduced to sequence granularity with ``S = 1``: every active
token becomes a "sequence" of one position, so a log-density sums over its ``E`` features and
every pair of tokens is valid.

Every function takes tensors of any floating dtype, computes in float64 and keeps autograd, so
tests can compare values *and* gradients against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)
LOG_2PI_E = math.log(2.0 * math.pi * math.e)

MAHALANOBIS_KEY = "gaussian_mixture_mahalanobis_distance_loss"
LOG_CONSTANTS_KEY = "gaussian_mixture_log_constants_and_determinant_loss"
ENTROPY_KEY = "gaussian_mixture_entropy_loss"
STD_LOG_KEY = "std_log_loss"
MI_KEY = "mutual_information_loss"

ENTROPY_COMPONENT_KEYS = (MAHALANOBIS_KEY, LOG_CONSTANTS_KEY)
MI_COMPONENT_KEYS = (MAHALANOBIS_KEY, LOG_CONSTANTS_KEY, ENTROPY_KEY, STD_LOG_KEY, MI_KEY)


@dataclass
class ReferenceEstimate:
    """What the reference computed (float64, differentiable ``value``)."""

    value: Tensor
    components: dict[str, Tensor]
    num_queries: int
    per_query: Tensor = field(repr=False)


def _f64(tensor: Tensor) -> Tensor:
    return tensor.to(torch.float64)


def as_bool_mask(mask: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    """``None`` means all true; a 0/1 tensor means ``mask != 0``."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    return (mask != 0).expand(shape).clone()


# ---------------------------------------------------------------------------------------------
# Square Mahalanobis distance
# ---------------------------------------------------------------------------------------------


def square_mahalanobis_distance(
    x: Tensor, y: Tensor, stds: Tensor, mask: Tensor | None = None
) -> Tensor:
    """``sum over active s, over e of 0.5 * ((x - y) / stds)^2`` with broadcasting."""
    x, y, stds = _f64(x), _f64(y), _f64(stds)
    full = torch.broadcast_shapes(x.shape, y.shape, stds.shape)
    if mask is not None:
        full = (*torch.broadcast_shapes(full[:-1], mask.shape), full[-1])
    terms = (0.5 * ((x - y) / stds) ** 2).expand(full)
    if mask is not None:
        active = (mask != 0).expand(full[:-1]).unsqueeze(-1)
        terms = torch.where(active, terms, torch.zeros((), dtype=terms.dtype))
    return terms.sum(dim=(-2, -1))


def pairwise_square_mahalanobis_distance(
    queries: Tensor,
    centres: Tensor,
    stds: Tensor,
    query_mask: Tensor | None = None,
    component_mask: Tensor | None = None,
) -> Tensor:
    """The ``(M, N)`` matrix of distances of queries ``(M, S, E)`` to centres ``(N, S, E)``."""
    m, s = queries.shape[:2]
    n = centres.shape[0]
    qmask = as_bool_mask(query_mask, (m, s))
    kmask = as_bool_mask(component_mask, (n, s))
    pair_mask = qmask[:, None, :] & kmask[None, :, :]
    return square_mahalanobis_distance(queries[:, None], centres[None], stds[None], pair_mask)


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def _residual(y: Tensor, clean: Tensor, means: Tensor) -> Tensor:
    """``y - c`` with ``c = x + mu``, evaluated as ``(y - x) - mu``: exact where ``y`` is close to
    ``x`` far from the origin (``y - x`` is then exact), where ``x + mu`` would round ``mu`` away."""
    return (y - clean) - means


def _tokens(mask: Tensor, *tensors: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
    """Active tokens of ``(B, S, E)`` tensors as one-position sequences ``(n, 1, E)``."""
    selected = tuple(t[mask].unsqueeze(1) for t in tensors)
    return selected, torch.ones((int(mask.sum()), 1), dtype=torch.bool)


def _where_pairs(pair_elems: Tensor, values: Tensor) -> Tensor:
    """Sum ``values`` (broadcast to ``(M, N, S, E)``) over the active elements of each pair."""
    zero = torch.zeros((), dtype=torch.float64)
    return torch.where(pair_elems, values, zero).sum(dim=(-2, -1))


def _pairs(qmask: Tensor, kmask: Tensor, e: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pair elements ``(M, N, S, E)``, their count ``|P(i, j)|`` and validity ``(M, N)``."""
    pair_positions = qmask[:, None, :] & kmask[None, :, :]
    pair_elems = pair_positions.unsqueeze(-1).expand(*pair_positions.shape, e)
    count = pair_elems.sum(dim=(-2, -1)).to(torch.float64)
    valid = pair_positions.any(dim=-1)
    return pair_elems, count, valid


def _zero_result(keys: tuple[str, ...], *inputs: Tensor) -> ReferenceEstimate:
    zero = sum(_f64(t).sum() * 0.0 for t in inputs)
    return ReferenceEstimate(
        value=zero,
        components={k: torch.zeros((), dtype=torch.float64) for k in keys},
        num_queries=0,
        per_query=torch.zeros(0, dtype=torch.float64),
    )


def _mean_result(per_query: list[Tensor], components: dict[str, list[Tensor]]) -> ReferenceEstimate:
    return ReferenceEstimate(
        value=torch.stack(per_query).mean(),
        components={k: torch.stack(v).mean().detach() for k, v in components.items()},
        num_queries=len(per_query),
        per_query=torch.stack(per_query),
    )


# ---------------------------------------------------------------------------------------------
# Gaussian mixture entropy
# ---------------------------------------------------------------------------------------------


def gaussian_mixture_entropy(
    clean_embeddings: Tensor,
    transformed_embeddings: Tensor,
    means: Tensor,
    stds: Tensor,
    mask: Tensor | None = None,
    *,
    component_mask: Tensor | None = None,
    granularity: str = "sequence",
) -> ReferenceEstimate:
    """``H = mean_i -log((1/|V_i|) sum_{j in V_i} exp(L_ij))`` and its two components."""
    inputs = (clean_embeddings, transformed_embeddings, means, stds)
    clean, y, means_, stds_ = (_f64(t) for t in inputs)
    m, s, e = y.shape
    n = clean.shape[0]
    qmask = as_bool_mask(mask, (m, s))
    kmask = as_bool_mask(component_mask, (n, s))
    if granularity == "token":
        (y,), qmask = _tokens(qmask, y)
        (clean, means_, stds_), kmask = _tokens(kmask, clean, means_, stds_)
    elif granularity != "sequence":
        raise ValueError(granularity)

    pair_elems, count, valid = _pairs(qmask, kmask, e)
    residual = _residual(y[:, None], clean[None], means_[None])
    maha = _where_pairs(pair_elems, 0.5 * (residual / stds_[None]) ** 2)
    log_det = _where_pairs(pair_elems, torch.log(stds_)[None])
    log_const = log_det + 0.5 * count * LOG_2PI
    log_density = -(maha + log_const)  # L_ij

    per_query: list[Tensor] = []
    components: dict[str, list[Tensor]] = {k: [] for k in ENTROPY_COMPONENT_KEYS}
    for i in range(log_density.shape[0]):
        v = valid[i]
        n_valid = int(v.sum())
        if n_valid == 0:
            continue
        l_i = log_density[i][v]
        lse = torch.logsumexp(l_i, dim=0)
        per_query.append(-(lse - math.log(n_valid)))
        log_w = l_i - lse
        w = log_w.exp()
        entropy_w = -(w * log_w).sum()
        components[MAHALANOBIS_KEY].append((w * maha[i][v]).sum())
        components[LOG_CONSTANTS_KEY].append(
            (w * log_const[i][v]).sum() + math.log(n_valid) - entropy_w
        )
    if not per_query:
        return _zero_result(ENTROPY_COMPONENT_KEYS, *inputs)
    return _mean_result(per_query, components)


# ---------------------------------------------------------------------------------------------
# Mutual information with sub-batch sampling
# ---------------------------------------------------------------------------------------------


def _mi_one_direction(
    y: Tensor,
    query_clean: Tensor,
    query_means: Tensor,
    query_stds: Tensor,
    qmask: Tensor,
    clean: Tensor,
    means: Tensor,
    stds: Tensor,
    kmask: Tensor,
    granularity: str,
    info_nce: bool,
    inputs: tuple[Tensor, ...],
) -> ReferenceEstimate:
    e = y.shape[-1]
    if granularity == "token":
        (y, query_clean, query_means, query_stds), qmask = _tokens(
            qmask, y, query_clean, query_means, query_stds
        )
        (clean, means, stds), kmask = _tokens(kmask, clean, means, stds)
    elif granularity != "sequence":
        raise ValueError(granularity)

    pair_elems, count, valid = _pairs(qmask, kmask, e)
    residual = _residual(y[:, None], clean[None], means[None])
    maha = _where_pairs(pair_elems, 0.5 * (residual / stds[None]) ** 2)
    log_det = _where_pairs(pair_elems, torch.log(stds)[None])
    own = 0.5 * (_residual(y, query_clean, query_means) / query_stds) ** 2
    own_maha = _where_pairs(pair_elems, own[:, None])
    own_log_det = _where_pairs(pair_elems, torch.log(query_stds)[:, None])
    log_ratio = log_det - own_log_det + maha - own_maha  # r_ij
    log_const = log_det + 0.5 * count * LOG_2PI
    own_log_density = -(own_maha + own_log_det + 0.5 * count * LOG_2PI)

    keys = MI_COMPONENT_KEYS
    per_query: list[Tensor] = []
    components: dict[str, list[Tensor]] = {k: [] for k in keys}
    for i in range(log_ratio.shape[0]):
        v = valid[i]
        n_valid = int(v.sum())
        if n_valid == 0:
            continue
        neg_r = -log_ratio[i][v]
        if info_nce:
            with_own = torch.cat([torch.zeros(1, dtype=torch.float64), neg_r])
            per_query.append(math.log(n_valid + 1) - torch.logsumexp(with_own, dim=0))
        else:
            per_query.append(math.log(n_valid) - torch.logsumexp(neg_r, dim=0))
        log_w = neg_r - torch.logsumexp(neg_r, dim=0)
        w = log_w.exp()
        entropy_w = -(w * log_w).sum()
        mahalanobis = (w * maha[i][v]).sum()
        constants = (w * log_const[i][v]).sum() + math.log(n_valid) - entropy_w
        std_log = (w * own_log_density[i][v]).sum()
        components[MAHALANOBIS_KEY].append(mahalanobis)
        components[LOG_CONSTANTS_KEY].append(constants)
        components[ENTROPY_KEY].append(mahalanobis + constants)
        components[STD_LOG_KEY].append(std_log)
        components[MI_KEY].append(mahalanobis + constants + std_log)
    if not per_query:
        return _zero_result(keys, *inputs)
    return _mean_result(per_query, components)


def _average_directions(
    results: list[ReferenceEstimate], inputs: tuple[Tensor, ...]
) -> ReferenceEstimate:
    """The mean over the valid queries of all directions (MATH.md: I is the mean over valid
    queries), so each direction weighs by its number of valid queries."""
    total = sum(r.num_queries for r in results)
    if total == 0:
        return _zero_result(MI_COMPONENT_KEYS, *inputs)

    def pooled(values: list[Tensor]) -> Tensor:
        return sum(r.num_queries * v for r, v in zip(results, values, strict=True)) / total

    return ReferenceEstimate(
        value=pooled([r.value for r in results]),
        components={k: pooled([r.components[k] for r in results]) for k in MI_COMPONENT_KEYS},
        num_queries=total,
        per_query=torch.cat([r.per_query for r in results]),
    )


def mutual_information_sub_batch(
    means_tensor: Tensor,
    stds_tensor: Tensor,
    noise_mask: Tensor | None,
    clean_input_embeddings: Tensor,
    noisy_input_embeddings: Tensor,
    combine_noise_masks_for_mutual_information_sub_batches: bool = True,
    *,
    granularity: str = "sequence",
    symmetric: bool = False,
    info_nce: bool = False,
) -> ReferenceEstimate:
    """The L1Out estimate ``I = mean_i -log((1/|V_i|) sum_j exp(-r_ij))`` and its components.

    ``info_nce=True`` adds the query's own component to the mixture (the InfoNCE estimate,
    ``log(|V_i| + 1) - log(1 + sum_j exp(-r_ij))``); its components are left as L1Out's.
    ``symmetric=True`` also evaluates with the halves swapped: the value and the components are
    the means over the valid queries of both directions; ``num_queries`` their total.
    """
    inputs = (means_tensor, stds_tensor, clean_input_embeddings, noisy_input_embeddings)
    means, stds, clean, noisy = (_f64(t) for t in inputs)
    b, s, _ = means.shape
    if b % 2 or b < 2:
        raise ValueError(f"batch size must be even and >= 2, got {b}")
    half = b // 2
    mask = as_bool_mask(noise_mask, (b, s))
    first, second = slice(0, half), slice(half, b)

    def direction(queries: slice, comps: slice) -> ReferenceEstimate:
        kmask = mask[comps] if combine_noise_masks_for_mutual_information_sub_batches else None
        return _mi_one_direction(
            noisy[queries],
            clean[queries],
            means[queries],
            stds[queries],
            mask[queries],
            clean[comps],
            means[comps],
            stds[comps],
            as_bool_mask(kmask, (half, s)),
            granularity,
            info_nce,
            inputs,
        )

    forward = direction(first, second)
    if not symmetric:
        return forward
    return _average_directions([forward, direction(second, first)], inputs)


# ---------------------------------------------------------------------------------------------
# Gaussian entropy log loss
# ---------------------------------------------------------------------------------------------


def gaussian_entropy_log_loss(
    stds: Tensor, noise_mask: Tensor | None = None, eps: float = 1e-12
) -> Tensor:
    """Mean over active elements of ``-log(stds + eps) - 0.5 log(2 pi e)`` (0 when none is
    active); ``eps`` is the tiny constant of MATH.md (the function's default)."""
    stds_ = _f64(stds)
    if noise_mask is None:
        active = torch.ones(stds_.shape, dtype=torch.bool)
    else:
        active = (noise_mask != 0).unsqueeze(-1).expand(stds_.shape)
    values = -torch.log(stds_ + eps) - 0.5 * LOG_2PI_E
    if not bool(active.any()):
        return stds_.sum() * 0.0
    return values[active].mean()
