"""A mean that maps many tokens to one: the pull against a direct computation, k-means."""

from __future__ import annotations

import pytest
import torch

from mi_losses.losses import kmeans_prototypes, prototype_pull_loss


def test_pull_is_the_mean_squared_distance_per_coordinate_to_the_nearest_prototype() -> None:
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    prototypes = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    expected = 0.0
    for m in means.tolist():
        expected += min(
            sum((a - b) ** 2 for a, b in zip(m, p, strict=True)) / 3 for p in prototypes.tolist()
        )
    assert float(prototype_pull_loss(means, prototypes)) == pytest.approx(expected / 7, rel=1e-12)
    requiring = means.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: prototype_pull_loss(x, prototypes), (requiring,))
    empty = torch.zeros(0, 3, requires_grad=True)
    loss = prototype_pull_loss(empty, prototypes.float())
    loss.backward()
    assert float(loss.detach()) == 0.0 and empty.grad is not None


def test_kmeans_finds_separated_weighted_clusters() -> None:
    generator = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(20, 2, generator=generator) for c in centres])
    weights = torch.ones(60)
    weights[:20] = 3.0  # weights change the starts, not the clusters' means here
    found = kmeans_prototypes(points, weights, 3, seed=2)
    distance = torch.cdist(found, centres).min(0).values
    assert float(distance.max()) < 0.1
    # a weighted mean: one heavy point pulls its cluster's centre
    pair = torch.tensor([[0.0], [1.0]])
    assert float(kmeans_prototypes(pair, torch.tensor([3.0, 1.0]), 1)) == pytest.approx(0.25)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"prototypes must have shape \(K >= 1, 3\).*got \(2, 4\)"):
        prototype_pull_loss(torch.zeros(5, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="means"):
        prototype_pull_loss(torch.zeros(3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 2\].*got 3"):
        kmeans_prototypes(torch.zeros(4, 2), torch.tensor([1.0, 1.0, 0.0, 0.0]), 3)
    with pytest.raises(ValueError, match=r"weights must have shape \(4,\)"):
        kmeans_prototypes(torch.zeros(4, 2), torch.ones(3), 2)
