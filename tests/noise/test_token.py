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
