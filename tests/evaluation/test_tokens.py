"""The one-token report numbers against brute force, on a tiny vocabulary in float64.

:func:`mi_losses.evaluation.token_privacy` on a random 40-token vocabulary, compared with a direct
float64 evaluation of MATH.md ("Known-prior mutual information for token noise layers") written
here.
"""

from __future__ import annotations

import math

import pytest
import torch

from mi_losses.evaluation import bucket_names, frequency_buckets, token_privacy


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
    result = token_privacy(
        noisy.float(),
        ids,
        table.float(),
        prior.float(),
        means.float(),
        stds.float(),
        buckets,
        vocab_chunk_size=7,
        edges=(5, 15),
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
