"""The learned inversion attack on tiny random data: tiny noise, huge noise, against Bayes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from mi_losses.attacks.inversion import (
    AttackInputs,
    InversionAttack,
    inversion_guesses,
    train_inversion_attack,
)
from mi_losses.attacks.posterior import gaussian_token_log_posterior
from mi_losses.functional import bayes_token_attack

V, E, S = 16, 8, 6
TABLE = torch.randn(V, E, generator=torch.Generator().manual_seed(0))


def sequences(n: int, seed: int, context: bool) -> dict[str, torch.Tensor]:
    """``n`` sequences; with ``context`` each token fixes the next (``t' = 3 t + 1 mod V``)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, S), generator=generator)
    if context:
        for s in range(1, S):
            ids[:, s] = (3 * ids[:, s - 1] + 1) % V
    noise_mask = torch.ones(n, S, dtype=torch.bool)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(noise_mask),
        "noise_mask": noise_mask,
    }


class IsotropicChannel:
    """``y = W_t + std * eps`` with the uniform-prior Bayes posterior over all ``V`` tokens."""

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, input_ids: torch.Tensor, noise_mask: torch.Tensor) -> AttackInputs:
        clean = TABLE[input_ids]
        noisy = torch.where(
            noise_mask.unsqueeze(-1), clean + self.std * torch.randn_like(clean), clean
        )
        posterior = gaussian_token_log_posterior(
            noisy.reshape(-1, E),
            TABLE,
            torch.zeros(V),
            torch.zeros(V, E),
            torch.full((V, E), self.std),
        )
        return AttackInputs(noisy, posterior.reshape(*input_ids.shape, V))


def validation_batches(channel: IsotropicChannel, context: bool) -> list[dict[str, torch.Tensor]]:
    batch = sequences(64, 99, context)
    torch.manual_seed(7)
    inputs = channel(batch["input_ids"], batch["noise_mask"])
    return [{**batch, "embeddings": inputs.embeddings, "log_posterior": inputs.log_posterior}]


def train(channel: IsotropicChannel, context: bool, use_posterior: bool, epochs: int) -> tuple:
    torch.manual_seed(0)
    attack = InversionAttack(
        torch.arange(V),
        TABLE,
        d_model=32,
        num_heads=2,
        max_length=S,
        dropout=0.0,
        learning_rate=3e-3,
        use_posterior=use_posterior,
    ).attach(channel)
    train_set = sequences(512, 1, context)
    loader = DataLoader(
        [{key: value[i] for key, value in train_set.items()} for i in range(512)], batch_size=32
    )
    val = validation_batches(channel, context)
    train_inversion_attack(attack, loader, val, max_epochs=epochs, patience=50)
    return attack, val


def failure(attack: InversionAttack, val: list[dict[str, torch.Tensor]]) -> float:
    guesses = inversion_guesses(attack, val, top_k=1)[:, 0]
    truth = val[0]["input_ids"][val[0]["noise_mask"]]
    return 1.0 - float((guesses == truth).float().mean())


def bayes_failure(val: list[dict[str, torch.Tensor]], std: float) -> float:
    batch = val[0]
    guesses = bayes_token_attack(
        torch.zeros(V, E), torch.full((V, E), std), None, batch["embeddings"], TABLE, torch.ones(V)
    )
    return 1.0 - float((guesses == batch["input_ids"]).float().mean())


def test_untrained_attack_with_posterior_is_the_bayes_attacker() -> None:
    channel = IsotropicChannel(1.0)
    val = validation_batches(channel, context=False)
    attack = InversionAttack(torch.arange(V), TABLE, d_model=16, num_heads=2, max_length=S)
    guesses = inversion_guesses(attack, val, top_k=1)[:, 0]
    batch = val[0]
    bayes = bayes_token_attack(
        torch.zeros(V, E), torch.full((V, E), 1.0), None, batch["embeddings"], TABLE, torch.ones(V)
    )
    assert torch.equal(guesses, bayes[batch["noise_mask"]])


@pytest.mark.slow
def test_recovers_tokens_at_tiny_noise_without_the_posterior() -> None:
    attack, val = train(IsotropicChannel(0.01), context=False, use_posterior=False, epochs=12)
    assert failure(attack, val) < 0.05
    curve = attack.validation_curve
    assert curve[0]["step"] == 0 and curve[-1]["failure"] < curve[0]["failure"]


@pytest.mark.slow
def test_fails_at_huge_noise() -> None:
    attack, val = train(IsotropicChannel(1e3), context=False, use_posterior=True, epochs=3)
    assert failure(attack, val) > 0.8  # chance is 1 - 1/16


@pytest.mark.slow
def test_at_least_as_strong_as_bayes_and_stronger_with_context() -> None:
    std = 1.5
    attack, val = train(IsotropicChannel(std), context=True, use_posterior=True, epochs=6)
    bayes = bayes_failure(val, std)
    assert bayes > 0.3  # the noise hides something from the one-token attacker
    assert failure(attack, val) <= bayes
    assert failure(attack, val) < bayes - 0.1  # context (the bigram) tells more


def test_labels_and_shapes() -> None:
    attack = InversionAttack(torch.tensor([3, 5, 9]), torch.randn(3, E), d_model=16, num_heads=2)
    assert attack.labels(torch.tensor([[5, 4, 9, 3]])).tolist() == [[1, -1, 2, 0]]
    with pytest.raises(ValueError, match="candidate_ids"):
        InversionAttack(torch.tensor([1, 2]), torch.randn(3, E))
    with pytest.raises(RuntimeError, match="attach"):
        attack.training_step(sequences(2, 0, False), 0)


def test_training_end_says_whether_early_stopping_or_the_cap_ended_training() -> None:
    channel = IsotropicChannel(1e3)  # nothing to learn: the validation failure cannot fall
    val = validation_batches(channel, context=False)
    train_set = sequences(128, 1, context=False)
    loader = DataLoader(
        [{key: value[i] for key, value in train_set.items()} for i in range(128)], batch_size=32
    )

    def fit(max_epochs: int, patience: int) -> InversionAttack:
        torch.manual_seed(0)
        attack = InversionAttack(
            torch.arange(V), TABLE, d_model=16, num_heads=2, max_length=S, learning_rate=0.0
        ).attach(channel)
        return train_inversion_attack(
            attack, loader, val, max_epochs=max_epochs, patience=patience, val_check_interval=2
        )

    # lr 0: every validation run (every 2 steps) equals the first one, so two more end it
    stopped = fit(max_epochs=50, patience=2).training_end
    assert stopped == {"steps": 6, "epochs": 1.5, "stopped_early": True, "best_step": 0}
    capped = fit(max_epochs=2, patience=50).training_end
    assert capped == {"steps": 8, "epochs": 2.0, "stopped_early": False, "best_step": 0}
