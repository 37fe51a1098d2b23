r"""A mean that maps many tokens to one: pull each released mean towards its nearest prototype.

A deterministic, invertible shift of a token's embedding is undone by a decoder trained afresh;
a shift that sends many tokens to one shared point is not (TextObfuscator, ACL Findings 2023).
:func:`prototype_pull_loss` is the squared distance of every noise mean $x_n + \mu_n$ to its
nearest prototype, and :func:`kmeans_prototypes` chooses the prototypes: weighted k-means of the
token embeddings (a token's weight: its training frequency).
"""

from __future__ import annotations

import torch

from mi_losses._validation import check_ndim

__all__ = ["kmeans_prototypes", "nearest_prototype", "prototype_pull_loss"]


def prototype_pull_loss(means: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    r"""$\frac1N \sum_n \min_k \frac1E \lVert m_n - p_k \rVert^2$: the mean squared distance per
    coordinate of each released mean to its nearest prototype.

    Args:
        means: the noise means $m_n = x_n + \mu_n$ at the noised positions ``(N, E)``.
        prototypes: ``(K, E)``, ``K >= 1``.

    Returns:
        A scalar (squared embedding units); ``0`` with a gradient when ``N = 0``.

    Example:
        >>> prototypes = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        >>> prototype_pull_loss(torch.tensor([[0.0, 0.2], [1.0, 0.6]]), prototypes)
        tensor(0.0500)
    """
    check_ndim("means", means, 2, "(N, E)")
    check_ndim("prototypes", prototypes, 2, "(K, E)")
    if prototypes.shape[0] == 0 or prototypes.shape[1] != means.shape[1]:
        raise ValueError(
            f"prototypes must have shape (K >= 1, {means.shape[1]}) like means' features, "
            f"got {tuple(prototypes.shape)}"
        )
    if means.shape[0] == 0:
        return means.sum() * 0.0
    squared = (means.unsqueeze(1) - prototypes.to(means.dtype).unsqueeze(0)).pow(2).mean(-1)
    return squared.min(-1).values.mean()


@torch.no_grad()
def kmeans_prototypes(
    points: torch.Tensor,
    weights: torch.Tensor | None,
    k: int,
    *,
    steps: int = 20,
    seed: int = 0,
) -> torch.Tensor:
    """Weighted k-means (Lloyd's iterations, in float64) of ``points`` ``(M, E)``.

    Starts from ``k`` distinct points drawn with ``seed``: uniformly when ``weights`` is
    ``None`` (every point of weight 1), else with probability proportional to ``weights``
    ``(M,)``; a cluster that loses every point keeps its centre.

    Returns:
        The ``(k, E)`` prototypes, in ``points``' dtype; the nearest one (L2) of every point
        is :func:`nearest_prototype`.

    Example:
        >>> points = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
        >>> kmeans_prototypes(points, torch.ones(4), 2).sort(0).values.squeeze(-1)
        tensor([0.0500, 5.1000])
    """
    check_ndim("points", points, 2, "(M, E)")
    if weights is not None and (
        weights.shape != points.shape[:1] or bool((weights < 0).any()) or float(weights.sum()) <= 0
    ):
        raise ValueError(
            f"weights must have shape ({points.shape[0]},), be >= 0 and not all 0, "
            f"got shape {tuple(weights.shape)}"
        )
    nonzero = points.shape[0] if weights is None else int((weights > 0).sum())
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= nonzero:
        raise ValueError(f"k must be an int in [1, {nonzero}] (points of weight > 0), got {k!r}")
    data = points.detach().double()
    generator = torch.Generator().manual_seed(seed)
    if weights is None:
        start = torch.randperm(data.shape[0], generator=generator)[:k]
        mass_of = torch.ones(data.shape[0], dtype=data.dtype, device=data.device)
    else:
        start = torch.multinomial(weights.double().cpu(), k, replacement=False, generator=generator)
        mass_of = weights.to(data)
    centres = data[start.to(data.device)].clone()
    for _ in range(steps):
        assignment = nearest_prototype(data, centres)
        totals = torch.zeros_like(centres).index_add_(0, assignment, data * mass_of.unsqueeze(-1))
        mass = torch.zeros(k, dtype=data.dtype, device=data.device).index_add_(
            0, assignment, mass_of
        )
        centres = torch.where(
            (mass > 0).unsqueeze(-1), totals / mass.clamp_min(1e-300).unsqueeze(-1), centres
        )
    return centres.to(points.dtype)


def nearest_prototype(points: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Index of the nearest prototype (L2, in float64) of every point, ``(M,)``.

    Example:
        >>> nearest_prototype(torch.tensor([[0.2], [4.0]]), torch.tensor([[0.0], [5.0]]))
        tensor([0, 1])
    """
    return torch.cdist(points.double(), prototypes.double()).argmin(-1)
