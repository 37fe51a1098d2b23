"""The adversary kept strong: its objectives against direct float64 computations, the pool, the
restarts, pre-training and the errors of bad options."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mi_losses.losses import (
    AdversarialPrivacy,
    AdversaryBatch,
    AdversarySettings,
    adversarial_privacy_loss,
)

C = 4


def small_logits() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 0.3, 3.0], [-2.0, 1.0, 1.0, 0.0]])
    return logits, torch.tensor([0, 1, 3])


def posteriors(logits: torch.Tensor) -> list[list[float]]:
    """softmax written out, in float64."""
    rows = []
    for row in logits.double().tolist():
        weights = [math.exp(v) for v in row]
        rows.append([w / sum(weights) for w in weights])
    return rows


def test_negative_cross_entropy_is_the_mean_log_probability_of_the_truth() -> None:
    logits, labels = small_logits()
    q = posteriors(logits)
    expected = sum(math.log(q[n][int(y)]) for n, y in enumerate(labels)) / 3
    got = adversarial_privacy_loss(logits, labels, "negative_cross_entropy")
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_posterior_entropy_is_log_c_minus_the_entropy() -> None:
    logits, labels = small_logits()
    entropies = [-sum(p * math.log(p) for p in row) for row in posteriors(logits)]
    expected = sum(math.log(C) - h for h in entropies) / 3
    got = adversarial_privacy_loss(logits, labels, "posterior_entropy")
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # zero for a uniform posterior, whatever the labels
    uniform = adversarial_privacy_loss(torch.zeros(3, C), labels, "posterior_entropy")
    assert float(uniform) == pytest.approx(0.0, abs=1e-6)


def test_prior_kl_is_the_kl_divergence_from_the_normalised_prior() -> None:
    logits, labels = small_logits()
    weights = [4.0, 2.0, 1.0, 1.0]
    prior = [w / sum(weights) for w in weights]
    expected = (
        sum(
            sum(p * math.log(p / pi) for p, pi in zip(row, prior, strict=True))
            for row in posteriors(logits)
        )
        / 3
    )
    log_weights = torch.tensor(weights).log()  # unnormalised: normalised inside
    got = adversarial_privacy_loss(logits, labels, "prior_kl", log_prior=log_weights)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    at_prior = adversarial_privacy_loss(
        torch.tensor(prior).log().expand(3, C), labels, "prior_kl", log_prior=log_weights
    )
    assert float(at_prior) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("target", [0.1, 0.3, 0.9])
def test_accuracy_hinge_penalises_only_the_expected_accuracy_above_target(target: float) -> None:
    logits, labels = small_logits()
    q = posteriors(logits)
    accuracy = sum(q[n][int(y)] for n, y in enumerate(labels)) / 3  # about 0.40
    got = adversarial_privacy_loss(logits, labels, "accuracy_hinge", target_accuracy=target)
    assert float(got) == pytest.approx(max(0.0, accuracy - target), abs=1e-6)
    requiring = logits.clone().requires_grad_(True)
    adversarial_privacy_loss(requiring, labels, "accuracy_hinge", target_accuracy=target).backward()
    assert requiring.grad is not None
    assert (float(requiring.grad.abs().sum()) > 0.0) == (accuracy > target)


@pytest.mark.parametrize(
    "objective", ["negative_cross_entropy", "posterior_entropy", "prior_kl", "accuracy_hinge"]
)
def test_no_attacked_position_gives_zero_with_a_gradient(objective: str) -> None:
    logits = torch.zeros(0, C, requires_grad=True)
    loss = adversarial_privacy_loss(
        logits,
        torch.zeros(0, dtype=torch.long),
        objective,  # type: ignore[arg-type]
        log_prior=torch.zeros(C),
    )
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None


def test_gradcheck_of_the_bounded_objectives() -> None:
    logits, labels = small_logits()
    logits = logits.double().requires_grad_(True)
    log_prior = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).log()

    for name in ("negative_cross_entropy", "posterior_entropy", "prior_kl", "accuracy_hinge"):
        assert torch.autograd.gradcheck(
            lambda x, name=name: adversarial_privacy_loss(
                x, labels, name, log_prior=log_prior, target_accuracy=0.1
            ),
            (logits,),
        )


def test_bad_arguments_name_the_argument_the_expected_and_the_value() -> None:
    logits, labels = small_logits()
    with pytest.raises(ValueError, match=r"objective.*'nope'"):
        adversarial_privacy_loss(logits, labels, "nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\).*got \(2,\)"):
        adversarial_privacy_loss(logits, labels[:2])
    with pytest.raises(ValueError, match=r"log_prior of shape \(4,\), got None"):
        adversarial_privacy_loss(logits, labels, "prior_kl")
    with pytest.raises(ValueError, match=r"target_accuracy must lie in \[0, 1\], got 1.5"):
        adversarial_privacy_loss(logits, labels, "accuracy_hinge", target_accuracy=1.5)
    with pytest.raises(ValueError, match="logits"):
        adversarial_privacy_loss(logits[0], labels)
    with pytest.raises(ValueError, match="attack_steps must be an int >= 1, got 0"):
        AdversarySettings(attack_steps=0)
    with pytest.raises(ValueError, match="pool_size must be an int >= 0, got -1"):
        AdversarySettings(pool_size=-1)
    with pytest.raises(ValueError, match=r"restart_every must be an int >= 0, got 2\.5"):
        AdversarySettings(restart_every=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="objective"):
        AdversarySettings(objective="entropy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"learning_rate must be > 0, got 0\.0"):
        AdversarySettings(learning_rate=0.0)
    with pytest.raises(ValueError, match=r"log_prior \(C,\), got None"):
        AdversarialPrivacy(OneHotAttack, AdversarySettings(objective="prior_kl"))
    with pytest.raises(RuntimeError, match="attach"):
        AdversarialPrivacy(OneHotAttack).pretrain(3)


class OneHotAttack(nn.Module):
    """logits = released @ weight: with one-hot releases, ``weight = s * I`` is an oracle."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(C, C))

    def forward(
        self, released: torch.Tensor, attention_mask: torch.Tensor, noise_mask: torch.Tensor
    ) -> torch.Tensor:
        return released @ self.weight


def one_hot_batch(seed: int, noise: float = 0.0, batch: int = 3, length: int = 5) -> AdversaryBatch:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (batch, length), generator=generator)
    released = nn.functional.one_hot(labels, C).float()
    released = released + noise * torch.randn(released.shape, generator=generator)
    labels[0, 0] = -1  # a token the attack cannot name: never attacked
    mask = torch.ones(batch, length, dtype=torch.bool)
    return AdversaryBatch(released, labels, mask, mask)


def test_the_layer_is_trained_against_the_strongest_of_the_pool() -> None:
    adversary = AdversarialPrivacy(OneHotAttack, AdversarySettings(pool_size=2))
    batch = one_hot_batch(0)
    with torch.no_grad():
        adversary.attack.weight.copy_(torch.eye(C))  # weak oracle
        adversary.snapshot()
        adversary.attack.weight.copy_(5.0 * torch.eye(C))  # strong oracle
        adversary.snapshot()
        adversary.attack.weight.copy_(-5.0 * torch.eye(C))  # the current one: anti-oracle
    assert len(adversary.pool) == 2
    loss = adversary(batch)
    assert adversary.last_strongest == 2  # pool[1], the strong oracle
    losses = adversary.last_attack_losses
    assert losses[2] < losses[1] < losses[0]
    logits, labels = AdversarialPrivacy._attacked(adversary.pool[1], batch)
    direct = adversarial_privacy_loss(logits, labels)
    assert float(loss) == pytest.approx(float(direct))
    # a full pool drops its oldest snapshot
    adversary.snapshot()
    assert len(adversary.pool) == 2
    assert torch.equal(adversary.pool[0].weight, 5.0 * torch.eye(C))


def test_the_layer_gradient_reaches_the_release_not_the_attack() -> None:
    adversary = AdversarialPrivacy(OneHotAttack, AdversarySettings(objective="posterior_entropy"))
    with torch.no_grad():
        adversary.attack.weight.copy_(torch.eye(C))
    batch = one_hot_batch(1)
    released = batch.released.clone().requires_grad_(True)
    adversary(batch._replace(released=released)).backward()
    assert released.grad is not None and float(released.grad.abs().sum()) > 0
    assert adversary.attack.weight.grad is None


def test_a_fresh_adversary_starts_every_restart_every_steps_and_is_pretrained() -> None:
    settings = AdversarySettings(restart_every=3, restart_steps=2, pool_size=5, attack_steps=2)
    adversary = AdversarialPrivacy(OneHotAttack, settings)
    draws = []

    def draw() -> AdversaryBatch:
        draws.append(len(draws))
        return one_hot_batch(len(draws))

    adversary.attach(draw)
    seen = []
    for step in range(7):
        adversary.update(one_hot_batch(100 + step))
        seen.append(adversary.attack)
    assert adversary.restarts == [3, 6]
    assert len(draws) == 4  # two restarts, two pre-training steps each
    assert seen[2] is not seen[3] and seen[3] is seen[4] is seen[5] and seen[5] is not seen[6]
    assert len(adversary.pool) == 2  # each replaced adversary joined the pool
    # two attack steps per layer step: AdamW counted them on the current adversary
    state = adversary.optimizer.state[adversary.attack.weight]
    assert int(state["step"]) == 2 + 2  # restart pre-training, then one layer step


def test_snapshots_join_the_pool_on_schedule() -> None:
    adversary = AdversarialPrivacy(OneHotAttack, AdversarySettings(pool_size=3, snapshot_every=2))
    for step in range(5):
        adversary.update(one_hot_batch(step))
    assert len(adversary.pool) == 2  # at steps 2 and 4
    assert all(not p.requires_grad for p in adversary.pool.parameters())


def test_pretraining_lowers_the_attack_loss_and_stops_on_a_plateau() -> None:
    torch.manual_seed(0)
    settings = AdversarySettings(pretrain_steps=60, learning_rate=0.05)
    adversary = AdversarialPrivacy(OneHotAttack, settings)
    counter = iter(range(10**6))
    adversary.attach(lambda: one_hot_batch(next(counter), noise=0.3))
    held_out = one_hot_batch(-1, noise=0.3)

    def attack_loss() -> float:
        with torch.no_grad():
            logits, labels = AdversarialPrivacy._attacked(adversary.attack, held_out)
            return float(nn.functional.cross_entropy(logits, labels))

    before = attack_loss()
    losses = adversary.pretrain()
    assert len(losses) == 60
    assert attack_loss() < 0.5 * before
    plateau = AdversarialPrivacy(
        OneHotAttack,
        AdversarySettings(pretrain_steps=100, pretrain_window=5, learning_rate=1e-9),
    ).attach(lambda: one_hot_batch(0))
    assert len(plateau.pretrain()) == 10  # two windows without a fall of 0.01


def test_the_layer_term_reads_the_logits_over_the_layer_temperature() -> None:
    settings = AdversarySettings(objective="posterior_entropy", layer_temperature=4.0)
    adversary = AdversarialPrivacy(OneHotAttack, settings)
    with torch.no_grad():
        adversary.attack.weight.copy_(20.0 * torch.eye(C))  # confident: saturated at T = 1
    batch = one_hot_batch(2)
    logits, labels = AdversarialPrivacy._attacked(adversary.attack, batch)
    expected = adversarial_privacy_loss(logits / 4.0, labels, "posterior_entropy")
    assert float(adversary(batch).detach()) == pytest.approx(float(expected))
    released = batch.released.clone().requires_grad_(True)
    adversary(batch._replace(released=released)).backward()
    cold = AdversarialPrivacy(OneHotAttack, AdversarySettings(objective="posterior_entropy"))
    with torch.no_grad():
        cold.attack.weight.copy_(20.0 * torch.eye(C))
    released_cold = batch.released.clone().requires_grad_(True)
    cold(batch._replace(released=released_cold)).backward()
    assert released.grad is not None and released_cold.grad is not None
    assert float(released.grad.abs().sum()) > 100 * float(released_cold.grad.abs().sum())
    with pytest.raises(ValueError, match=r"layer_temperature must be > 0, got 0\.0"):
        AdversarySettings(layer_temperature=0.0)
