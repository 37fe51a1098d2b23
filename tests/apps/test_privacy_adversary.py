"""Both noise layers trained against an adversary kept strong, on tiny random data."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mi_losses.apps.privacy.builders import learned_sequence_channel
from mi_losses.apps.privacy.sequence import SequenceObfuscation
from mi_losses.evaluation.channels import GaussianTokenChannel, SequenceChannel
from mi_losses.evaluation.sequences import SequenceDataset
from mi_losses.losses import AdversarySettings
from tests.apps.test_privacy_frontier import S, study  # noqa: F401  (the fixture)

STRONG = AdversarySettings(
    objective="posterior_entropy",
    attack_steps=2,
    pretrain_steps=5,
    pool_size=2,
    snapshot_every=2,
    restart_every=3,
    restart_steps=2,
)


def fit(task: SequenceObfuscation, loader: DataLoader, steps: int) -> pl.Trainer:  # type: ignore[type-arg]
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, train_dataloaders=loader)
    return trainer


@pytest.mark.parametrize("layer", ["sequence", "token"])
def test_a_pretrained_pooled_restarted_adversary_trains_either_layer(study, layer: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    data, encoder = study
    pl.seed_everything(0, verbose=False)
    task = SequenceObfuscation(
        encoder, alpha=0.5, objective="adversarial", hidden_dim=8, candidates=data.candidates,
        max_length=S, init_std=0.3, adversary=STRONG, layer=layer,  # type: ignore[arg-type]
    )  # fmt: skip
    assert task.adversary is not None
    layer_before = [p.detach().clone() for p in task.noise_layer.parameters()]
    loader = DataLoader(SequenceDataset(data.train), batch_size=16)
    trainer = fit(task, loader, 7)
    assert trainer.global_step == 7  # only the layer's optimizer counts
    assert len(task.pretrain_losses) == 5
    assert task.adversary.steps == 7 and task.adversary.restarts == [3, 6]
    assert len(task.adversary.pool) == 2  # snapshot at 2, restart at 3 (full: oldest left), 6
    assert len(task.history) == 7
    assert all(0.0 <= row["privacy"] <= math.log(len(data.candidates)) for row in task.history)
    assert all(math.isfinite(row["strongest_attack_loss"]) for row in task.history)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(layer_before, task.noise_layer.parameters(), strict=True)
    )


def test_pretraining_on_the_starting_layer_lowers_the_attack_loss(study) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    data, encoder = study
    pl.seed_everything(0, verbose=False)
    settings = AdversarySettings(pretrain_steps=40, learning_rate=3e-3)
    task = SequenceObfuscation(
        encoder, alpha=0.0, objective="adversarial", hidden_dim=8, candidates=data.candidates,
        max_length=S, init_std=0.05, adversary=settings, learning_rate=1e-9,
    )  # fmt: skip
    fit(task, DataLoader(SequenceDataset(data.train), batch_size=16), 1)
    losses = task.pretrain_losses
    assert len(losses) == 40
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4


def test_prior_kl_needs_the_prior_and_adversary_needs_the_adversarial_objective(study) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    data, encoder = study
    kl = AdversarySettings(objective="prior_kl")
    with pytest.raises(ValueError, match=r"needs prior \(12,\), got None"):
        SequenceObfuscation(
            encoder, objective="adversarial", candidates=data.candidates, adversary=kl
        )
    with pytest.raises(ValueError, match="adversary settings need objective 'adversarial'"):
        SequenceObfuscation(encoder, objective="sub_batch", adversary=kl)
    with pytest.raises(ValueError, match="layer must be 'sequence' or 'token', got 'mlp'"):
        SequenceObfuscation(encoder, layer="mlp")  # type: ignore[arg-type]
    task = SequenceObfuscation(
        encoder, objective="adversarial", candidates=data.candidates, adversary=kl,
        prior=data.prior, max_length=S, hidden_dim=8,
    )  # fmt: skip
    assert task.adversary is not None and task.adversary.log_prior is not None
    assert task.adversary.log_prior.shape == data.candidates.shape


@pytest.mark.parametrize(
    ("layer", "channel"), [("sequence", SequenceChannel), ("token", GaussianTokenChannel)]
)
def test_the_frontier_builder_trains_the_requested_layer(study, layer: str, channel: type) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    data, encoder = study
    settings = AdversarySettings(objective="accuracy_hinge", target_accuracy=0.2, pretrain_steps=2)
    built = learned_sequence_channel(
        encoder, data, "adversarial", 0.3, 2, 0, adversary=settings,
        noise_layer=layer,  # type: ignore[arg-type]
    )  # fmt: skip
    assert isinstance(built, channel)


def test_the_prototype_pull_moves_the_released_means_towards_shared_points(study) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    data, encoder = study
    with pytest.raises(ValueError, match="prototype_weight > 0 needs candidates and prior"):
        SequenceObfuscation(encoder, prototype_weight=1.0)
    with pytest.raises(ValueError, match="prototype_weight must be >= 0, got -1"):
        SequenceObfuscation(encoder, prototype_weight=-1.0)
    pl.seed_everything(0, verbose=False)
    task = SequenceObfuscation(
        encoder, alpha=0.0, objective="sub_batch", hidden_dim=8, candidates=data.candidates,
        prior=data.prior, prototype_weight=1.0, num_prototypes=3, mean_scale=1.0,
        learning_rate=0.05, max_length=S,
    )  # fmt: skip
    assert task.prototypes is not None and task.prototypes.shape == (3, data.table.shape[1])
    fit(task, DataLoader(SequenceDataset(data.train), batch_size=16), 12)
    pulls = [row["prototype_pull"] for row in task.history]
    assert pulls[-1] < 0.8 * pulls[0]  # 0.41 -> 0.29 in 12 steps


def test_the_nearest_attack_starts_as_nearest_neighbour(study) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from mi_losses.apps.privacy.sequence import _release_attack

    data, _ = study
    candidates = data.candidates
    attack = _release_attack(candidates, data.table, S, True).eval()
    generator = torch.Generator().manual_seed(3)
    ids = candidates[torch.randint(0, len(candidates), (4, S), generator=generator)]
    released = data.table[ids] + 0.4 * torch.randn(4, S, data.table.shape[1], generator=generator)
    mask = torch.ones(4, S, dtype=torch.bool)
    guesses = attack(released, mask, mask).argmax(-1)
    nearest = torch.cdist(released, data.table[candidates].unsqueeze(0)).argmin(-1)
    assert torch.equal(guesses, nearest)
    assert not torch.equal(
        guesses, _release_attack(candidates, data.table, S, False)(released, mask, mask).argmax(-1)
    )


def test_committed_adversary_points_have_the_schema_and_valid_settings() -> None:
    import json
    from pathlib import Path

    from mi_losses.evaluation.points import check_points

    path = Path(__file__).resolve().parents[2] / "docs" / "privacy_adversary.json"
    points = json.loads(path.read_text())
    check_points(points)
    for point in points:
        settings = dict(point["adversary"])
        assert isinstance(settings.pop("nearest"), bool)
        assert point["objective"] == f"adversarial_{AdversarySettings(**settings).objective}"
        assert point["bayes_attack_failure"] is None  # the sequence layer has no Bayes attacker
