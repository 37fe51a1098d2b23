"""The case study's report numbers against brute force, on a tiny vocabulary in float64.

Pure torch (no optional extra): the metrics of :mod:`mi_losses.apps.minilm.evaluate` are computed
on a random 40-token vocabulary and compared with a direct float64 evaluation of MATH.md
("Known-prior mutual information for token noise layers") written here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mi_losses.apps.minilm.evaluate import _token_privacy, bucket_names, frequency_buckets
from mi_losses.noise import FrequencyRuleNoise, IsotropicNoise, LearnedTokenNoise

ROOT = Path(__file__).resolve().parents[2]


def log_likelihoods(noisy: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """``log N(y_i ; means_v, diag stds_v^2)`` for every pair, ``(N, V)``, one pair at a time."""
    rows = []
    for y in noisy.double():
        row = []
        for mean, std in zip(means.double(), stds.double(), strict=True):
            z = (y - mean) / std
            row.append(
                -0.5 * float(z @ z) - float(std.log().sum()) - 0.5 * len(y) * math.log(2 * math.pi)
            )
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def brute_force(noisy, ids, table, prior, means, stds):  # type: ignore[no-untyped-def]
    """Exact MI per token, Bayes guesses (top 5), Fano floor, by the formulas of MATH.md."""
    scores = log_likelihoods(noisy, table.double() + means.double(), stds)
    support = prior > 0
    log_prior = prior.double().log()
    joint = (log_prior + scores)[:, support]
    per_token = scores[torch.arange(len(ids)), ids] - torch.logsumexp(joint, dim=-1)
    posterior = torch.where(support, log_prior + scores, -math.inf)
    top5 = posterior.topk(5, dim=-1).indices
    entropy = float(-(prior[support].double() * log_prior[support]).sum())
    mi = float(per_token.mean())
    fano = (entropy - mi - math.log(2)) / math.log(int(support.sum()) - 1)
    return per_token, top5, fano, entropy


@pytest.fixture
def tiny() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    vocab, dim = 40, 6
    table = torch.randn(vocab, dim, generator=generator) * 0.5
    counts = torch.randint(0, 30, (vocab,), generator=generator).double()
    counts[3] = 0.0  # a token never seen in training: the smoothed prior keeps it
    prior = (counts + 0.5) / (counts + 0.5).sum()
    ids = torch.multinomial(prior, 300, replacement=True, generator=generator)
    stds = 0.2 + torch.rand(vocab, dim, generator=generator)
    means = 0.1 * torch.randn(vocab, dim, generator=generator)
    noisy = table[ids] + means[ids] + stds[ids] * torch.randn(300, dim, generator=generator)
    return {
        "table": table,
        "counts": counts,
        "prior": prior,
        "ids": ids,
        "stds": stds,
        "means": means,
        "noisy": noisy,
    }


def test_report_numbers_equal_brute_force(tiny: dict[str, torch.Tensor]) -> None:
    table, prior, ids, noisy = tiny["table"], tiny["prior"], tiny["ids"], tiny["noisy"]
    means, stds = tiny["means"], tiny["stds"]
    buckets = frequency_buckets(tiny["counts"], (5, 15))
    result = _token_privacy(
        noisy.float(),
        ids,
        table.float(),
        prior.float(),
        means.float(),
        stds.float(),
        buckets,
        7,
        (5, 15),
    )
    per_token, top5, fano, entropy = brute_force(noisy, ids, table, prior, means, stds)
    assert result["exact_mi_nats_per_token"] == pytest.approx(float(per_token.mean()), abs=1e-4)
    hit1 = top5[:, 0] == ids
    assert result["bayes_attack_failure"] == pytest.approx(1 - float(hit1.double().mean()))
    hit5 = (top5 == ids[:, None]).any(-1)
    assert result["bayes_top5_failure"] == pytest.approx(1 - float(hit5.double().mean()))
    assert result["fano_floor"] == pytest.approx(fano, abs=1e-4)
    assert result["prior_entropy_nats"] == pytest.approx(entropy, abs=1e-6)
    assert 0.0 < result["bayes_attack_failure"] < 1.0, "the test must have hits and misses"
    # The Bayes attacker is optimal: no nearest-neighbour attack does better on these tokens.
    for key in ("nn_failure_cosine", "nn_failure_l2", "nn_failure_l2_shift_aware"):
        assert result[key] >= result["bayes_attack_failure"] - 0.02, key
    # Per bucket: the same brute force restricted to the bucket's tokens.
    self_information = -prior.double().log()[ids]
    token_buckets = buckets[ids]
    names = bucket_names((5, 15))
    assert set(result["buckets"]) <= set(names)
    for index, name in enumerate(names):
        mask = token_buckets == index
        bucket = result["buckets"][name]
        assert bucket["token_share"] == pytest.approx(float(mask.double().mean()))
        assert bucket["exact_mi_nats_per_token"] == pytest.approx(
            float(per_token[mask].mean()), abs=1e-4
        )
        information = float(self_information[mask].mean())
        assert bucket["self_information_nats"] == pytest.approx(information, rel=1e-5)
        assert bucket["hidden_fraction"] == pytest.approx(
            1 - float(per_token[mask].mean()) / information, abs=1e-4
        )
        assert bucket["bayes_attack_failure"] == pytest.approx(
            1 - float(hit1[mask].double().mean())
        )


def test_frequency_buckets_follow_the_training_ranks() -> None:
    counts = torch.tensor([5.0, 50.0, 0.0, 7.0, 50.0, 1.0])
    # ranks: token 1 (50) 0, token 4 (50) 1, token 3 2, token 0 3, token 5 4, token 2 5.
    assert frequency_buckets(counts, (2, 4)).tolist() == [1, 0, 2, 1, 0, 2]
    assert bucket_names((2, 4)) == ["rank 1-2", "rank 3-4", "rank > 4"]


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


def test_frontier_json_schema() -> None:
    from mi_losses.apps.minilm.sweep import REQUIRED_KEYS

    points = json.loads((ROOT / "docs" / "minilm_sweep_frontier.json").read_text())
    assert isinstance(points, list) and points
    objectives = {point["objective"] for point in points}
    assert {"isotropic", "frequency_rule", "vocabulary", "sub_batch"} <= objectives
    for point in points:
        assert set(REQUIRED_KEYS) <= set(point), point
        assert isinstance(point["objective"], str)
        for key in REQUIRED_KEYS[1:]:
            assert isinstance(point[key], (int, float)) and math.isfinite(point[key]), key
        for key in ("retrieval_at_1", "bayes_attack_failure"):
            assert 0.0 <= point[key] <= 1.0
        assert -1.0 <= point["sentence_cosine"] <= 1.0
        assert point["exact_mi_nats_per_token"] >= -0.5


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
