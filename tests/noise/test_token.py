"""The token noise layers: the frequency rule, context-freeness, the mean bound, the warm start."""

from __future__ import annotations

import pytest
import torch

from mi_losses.noise import FrequencyRuleNoise, IsotropicNoise, LearnedTokenNoise


def test_frequency_rule_gives_the_large_std_to_the_k_most_frequent_tokens() -> None:
    counts = torch.tensor([5.0, 50.0, 0.0, 7.0, 40.0, 1.0])
    table = torch.randn(6, 3)
    rule = FrequencyRuleNoise(counts, k=2, large_std=2.0, small_std=0.02)
    means, stds = rule.vocabulary_parameters(table)
    assert torch.equal(means, torch.zeros(6, 3))
    assert stds[:, 0].tolist() == pytest.approx([0.02, 2.0, 0.02, 0.02, 2.0, 0.02])
    ids = torch.tensor([[1, 0, 4]])
    mask = torch.tensor([[True, True, False]])
    out = rule(ids, table, mask)
    assert torch.equal(out.noisy[0, 2], table[4]), "unmasked tokens stay clean"
    assert out.stds[0, :, 0].tolist() == pytest.approx([2.0, 0.02, 2.0])
    with pytest.raises(ValueError, match="k must lie in"):
        FrequencyRuleNoise(counts, k=7)


def test_token_layers_are_context_free() -> None:
    """A token's mean and std are the same wherever it occurs and equal its vocabulary row's."""
    torch.manual_seed(0)
    table = torch.randn(50, 8)
    layer = LearnedTokenNoise(8, hidden_dim=16, mean_scale=0.1)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    ids = torch.tensor([[3, 7, 3, 9], [9, 3, 1, 1]])
    out = layer(ids, table, torch.ones_like(ids, dtype=torch.bool))
    with torch.no_grad():
        means, stds = layer.vocabulary_parameters(table)
    torch.testing.assert_close(out.means.detach(), means[ids])
    torch.testing.assert_close(out.stds.detach(), stds[ids])
    assert float(means.abs().max()) <= 0.1 + 1e-6, "the mean shift is bounded by mean_scale"
    iso_means, iso_stds = IsotropicNoise(0.3).vocabulary_parameters(table, torch.tensor([1, 2]))
    assert torch.equal(iso_stds, torch.full((2, 8), 0.3))
    assert torch.equal(iso_means, torch.zeros(2, 8))


def test_warm_start_gives_chosen_tokens_their_own_std() -> None:
    table = torch.randn(30, 8)
    layer = LearnedTokenNoise(8, hidden_dim=4, init_std=0.02, max_std=4.0, vocab_size=30)
    layer.warm_start(torch.tensor([2, 5]), 2.0)
    with torch.no_grad():
        _, stds = layer.vocabulary_parameters(table)
    torch.testing.assert_close(stds[[2, 5]], torch.full((2, 8), 2.0))
    others = torch.ones(30, dtype=torch.bool)
    others[[2, 5]] = False
    torch.testing.assert_close(stds[others], torch.full((28, 8), 0.02))
    with torch.no_grad():
        _, rows = layer.vocabulary_parameters(table, torch.tensor([5, 0]))
    torch.testing.assert_close(rows, stds[[5, 0]])
    with pytest.raises(ValueError, match="vocab_size > 0"):
        LearnedTokenNoise(8).warm_start(torch.tensor([1]), 2.0)


def test_kmeans_centroids_are_the_means_of_their_clusters() -> None:
    from mi_losses.losses.prototypes import kmeans_prototypes, nearest_prototype

    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = (centres.repeat_interleave(5, 0) + 0.1 * torch.randn(15, 2, generator=generator))[
        torch.randperm(15, generator=generator)
    ]
    centroids = kmeans_prototypes(points, None, 3, seed=1)
    assignment = nearest_prototype(points, centroids)
    # Three blobs, three clusters of five points each; every centroid is its cluster's mean.
    assert sorted(torch.bincount(assignment, minlength=3).tolist()) == [5, 5, 5]
    for cluster in range(3):
        members = points[assignment == cluster]
        torch.testing.assert_close(centroids[cluster], members.mean(0))
        blob = torch.cdist(members, centres).argmin(-1)
        assert bool((blob == blob[0]).all()), "a cluster is one blob"
    nearest = torch.cdist(points, centroids).argmin(-1)
    assert torch.equal(assignment, nearest)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 15\]"):
        kmeans_prototypes(points, None, 16)


def test_prototype_mean_pulls_every_token_towards_its_cluster() -> None:
    """``mu_v = g_v (P_c(v) - W_v)`` at init (the MLP's shift is 0): checked row by row."""
    torch.manual_seed(0)
    table = torch.randn(20, 4, dtype=torch.float64)
    layer = LearnedTokenNoise(
        4, hidden_dim=6, vocab_size=20, num_prototypes=3, prototype_pull=0.25
    ).double()
    rows = torch.tensor([0, 3, 5, 7, 11, 13, 17])
    layer.fit_prototypes(table, rows, seed=0)
    prototypes, assigned = layer.prototypes, layer.prototype_of
    assert prototypes.shape == (3, 4) and assigned.shape == (20,)
    with torch.no_grad():
        layer.prototype_gate[2] = 1.7  # clamped to 1
        layer.prototype_gate[4] = -0.5  # clamped to 0
        means, _ = layer.vocabulary_parameters(table)
    for v in range(20):
        distances = [float((table[v] - p).norm()) for p in prototypes]
        assert int(assigned[v]) == min(range(3), key=distances.__getitem__)
        gate = {2: 1.0, 4: 0.0}.get(v, 0.25)
        torch.testing.assert_close(means[v], gate * (prototypes[assigned[v]] - table[v]))
    with torch.no_grad():
        subset, _ = layer.vocabulary_parameters(table, torch.tensor([4, 2, 9]))
    torch.testing.assert_close(subset, means[[4, 2, 9]])


def test_prototype_pull_of_one_maps_a_cluster_to_one_centre() -> None:
    torch.manual_seed(1)
    table = torch.randn(30, 5)
    layer = LearnedTokenNoise(5, hidden_dim=6, vocab_size=30, num_prototypes=4)
    layer.fit_prototypes(table)
    with torch.no_grad():
        means, _ = layer.vocabulary_parameters(table)
    centres = table + means
    for cluster in range(4):
        members = centres[layer.prototype_of == cluster]
        torch.testing.assert_close(members, layer.prototypes[cluster].expand_as(members))
    # The gate is learned: a loss on the centres reaches it.
    (table + layer.vocabulary_parameters(table)[0]).square().sum().backward()
    assert (
        layer.prototype_gate.grad is not None and float(layer.prototype_gate.grad.abs().sum()) > 0
    )


def test_prototype_options_are_checked_and_default_state_is_unchanged() -> None:
    assert set(LearnedTokenNoise(4, vocab_size=5).state_dict()) == set(
        LearnedTokenNoise(4, vocab_size=5, prototype_pull=0.5).state_dict()
    )
    assert not any("prototype" in key for key in LearnedTokenNoise(4, vocab_size=5).state_dict())
    with pytest.raises(ValueError, match="needs vocab_size > 0"):
        LearnedTokenNoise(4, num_prototypes=2)
    with pytest.raises(ValueError, match="num_prototypes must be >= 0"):
        LearnedTokenNoise(4, vocab_size=5, num_prototypes=-1)
    with pytest.raises(ValueError, match=r"prototype_pull must lie in \[0, 1\], got 1.5"):
        LearnedTokenNoise(4, vocab_size=5, num_prototypes=2, prototype_pull=1.5)
    with pytest.raises(ValueError, match="needs num_prototypes > 0"):
        LearnedTokenNoise(4, vocab_size=5).fit_prototypes(torch.randn(5, 4))
    layer = LearnedTokenNoise(4, vocab_size=5, num_prototypes=2)
    with pytest.raises(ValueError, match=r"table must have 5 rows \(vocab_size\), got 6"):
        layer.fit_prototypes(torch.randn(6, 4))
    with pytest.raises(RuntimeError, match="call fit_prototypes"):
        layer.vocabulary_parameters(torch.randn(5, 4))


def test_a_layer_with_prototypes_saves_and_reloads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    table = torch.randn(12, 4)
    layer = LearnedTokenNoise(4, hidden_dim=6, vocab_size=12, num_prototypes=3, prototype_pull=0.5)
    layer.fit_prototypes(table)
    loaded = LearnedTokenNoise.from_pretrained(layer.save_pretrained(tmp_path / "layer"))
    with torch.no_grad():
        for mine, theirs in zip(
            layer.vocabulary_parameters(table), loaded.vocabulary_parameters(table), strict=True
        ):
            assert torch.equal(mine, theirs)
