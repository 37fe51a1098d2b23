"""The privacy study on tiny random data: every channel judged, the frontier JSON's schema."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mi_losses.apps.privacy.frontier import BASELINES, STYLES, TABLE_END, TABLE_START, combine
from mi_losses.evaluation.channels import GaussianTokenChannel, ReleaseChannel, SequenceChannel
from mi_losses.evaluation.judge import InversionSettings, judge
from mi_losses.evaluation.points import REQUIRED_KEYS, check_points, format_points
from mi_losses.evaluation.sequences import StudyData, TokenizedSequences
from mi_losses.noise import FrequencyRuleNoise, IsotropicNoise, SequenceGaussianNoiseLayer

V, E, S = 12, 6, 5


class MeanPoolEncoder(nn.Module):
    """A stand-in for the frozen encoder: the sentence embedding is the masked mean."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.word_embedding_table = table

    def sentence_embedding(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.float().unsqueeze(-1)
        return (embeddings * weights).sum(1) / weights.sum(1)


def sequences(n: int, seed: int) -> TokenizedSequences:
    ids = torch.randint(0, V - 2, (n, S), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(n, S, dtype=torch.bool)
    mask[:, 0] = False  # a clean first position, like [CLS]
    return TokenizedSequences(ids, torch.ones(n, S, dtype=torch.bool), mask)


@pytest.fixture
def study() -> tuple[StudyData, MeanPoolEncoder]:
    table = torch.randn(V, E, generator=torch.Generator().manual_seed(0))
    train, val = sequences(64, 1), sequences(16, 2)
    val.input_ids[0, 1] = V - 1  # one validation token never seen in training
    counts = torch.bincount(train.input_ids[train.noise_mask], minlength=V).double()
    encoder = MeanPoolEncoder(table)
    clean = encoder.sentence_embedding(table[val.input_ids], val.attention_mask)
    return StudyData(train, val, table, counts, clean), encoder


def channels(data: StudyData) -> dict[str, object]:
    common = (data.table, data.prior, data.candidates)
    return {
        "isotropic": GaussianTokenChannel(IsotropicNoise(0.3), *common),
        "frequency_rule": GaussianTokenChannel(FrequencyRuleNoise(data.counts, 3), *common),
        "santext": ReleaseChannel("santext", 2.0, *common),
        "laplace_dp": ReleaseChannel("laplace_dp", 5.0, *common, num_samples=32),
        "learned_sequence": SequenceChannel(
            SequenceGaussianNoiseLayer(embedding_dim=E, hidden_dim=8, num_heads=2), *common
        ),
    }


@pytest.mark.parametrize(
    "layer", ["isotropic", "frequency_rule", "santext", "laplace_dp", "learned_sequence"]
)
def test_every_channel_is_judged_by_the_attackers_that_apply(study, layer: str) -> None:  # type: ignore[no-untyped-def]
    data, encoder = study
    channel = channels(data)[layer]
    point = judge(
        channel, encoder, data, layer=layer, objective="none", parameter="p", value=1.0, seed=0,
        batch_size=8,
    )  # fmt: skip
    check_points([point])
    assert point["tokens_attacked"] == int(data.val.noise_mask.sum())
    context_free = layer != "learned_sequence"
    assert (point["bayes_attack_failure"] is not None) == context_free
    assert (point["exact_mi_nats_per_token"] is not None) == (
        layer in {"isotropic", "frequency_rule", "santext"}
    )
    assert point["strongest_attack_failure"] == min(
        point["nn_failure"], point["bayes_attack_failure"] or 1.0
    )
    # One shared draw: judging twice gives the same numbers.
    again = judge(
        channel, encoder, data, layer=layer, objective="none", parameter="p", value=1.0, seed=0,
        batch_size=8,
    )  # fmt: skip
    assert again["nn_failure"] == point["nn_failure"]
    assert again["retrieval_at_1"] == point["retrieval_at_1"]


@pytest.mark.slow
def test_inversion_enters_the_strongest_failure(study) -> None:  # type: ignore[no-untyped-def]
    data, encoder = study
    channel = GaussianTokenChannel(IsotropicNoise(1.5), data.table, data.prior, data.candidates)
    settings = InversionSettings(d_model=16, num_heads=2, batch_size=16, max_epochs=2)
    point = judge(
        channel, encoder, data, layer="isotropic", objective="none", parameter="std", value=1.5,
        seed=0, inversion=settings, batch_size=8,
    )  # fmt: skip
    check_points([point])
    assert point["inversion_failure"] is not None and point["inversion_curve"]
    assert point["inversion_bayes_fallback_tokens"] >= 0
    assert point["strongest_attack_failure"] == min(
        point["nn_failure"], point["bayes_attack_failure"], point["inversion_failure"]
    )


def _point(**overrides: object) -> dict[str, object]:
    point: dict[str, object] = {key: 0.5 for key in REQUIRED_KEYS}
    point.update(layer="santext", objective="none", parameter="epsilon", value=1.0, seed=0)
    point.update(exact_mi_nats_per_token=1.0, strongest_attack_failure=0.5)
    point.update(overrides)
    return point


def test_schema_check_rejects_missing_keys_and_a_wrong_strongest() -> None:
    check_points([_point(), _point(bayes_attack_failure=None, exact_mi_nats_per_token=None)])
    bad = _point()
    del bad["inversion_failure"]
    with pytest.raises(ValueError, match="lacks"):
        check_points([bad])
    with pytest.raises(ValueError, match="lowest"):
        check_points([_point(inversion_failure=0.2)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_points([_point(nn_failure=1.5)])


@pytest.mark.slow
def test_combine_writes_json_figures_and_the_page_table(tmp_path: Path) -> None:
    run = tmp_path / "run.json"
    points = [
        _point(
            seed=0,
            inversion_curve=[{"step": 0.0, "failure": 0.6, "top5_failure": 0.3}],
            inversion_settings={"max_epochs": 4},
        ),
        _point(seed=1, retrieval_at_1=0.7, inversion_settings={"max_epochs": 4}),
    ]
    run.write_text(json.dumps(points))
    page = tmp_path / "frontier.md"
    page.write_text(f"intro\n{TABLE_START}\nold\n{TABLE_END}\noutro\n")
    combine(
        [str(run)],
        output_json=str(tmp_path / "frontier.json"),
        figure=str(tmp_path / "frontier.png"),
        curves=str(tmp_path / "curves.png"),
        page=str(page),
    )
    assert json.loads((tmp_path / "frontier.json").read_text()) == points
    assert (tmp_path / "frontier.png").stat().st_size > 0
    text = page.read_text()
    assert "old" not in text and "0.600 ± 0.141" in text and text.endswith("outro\n")
    assert "| santext | none | epsilon 1 | 0,1 |" in format_points(points, order=list(STYLES))
    assert "| 0.500 ± 0.000 (cap 4) |" in format_points(
        points, order=list(STYLES)
    )  # the attack's epoch cap
    ended = [
        _point(inversion_settings={"max_epochs": 40}, inversion_stopped_early=True)
        | {"inversion_epochs": 17.25},
        _point(seed=1, inversion_settings={"max_epochs": 40}, inversion_stopped_early=False)
        | {"inversion_epochs": 40.0},
    ]
    assert "(cap 40, stopped at epoch 17.2; reached) |" in format_points(ended, order=list(STYLES))


def test_largest_budget_keeps_the_strongest_attack_of_each_point() -> None:
    from mi_losses.apps.privacy.plots import largest_budget

    capped = [_point(inversion_settings={"max_epochs": cap}) for cap in (4, 40, 12)]
    other_seed = _point(seed=1, inversion_settings={"max_epochs": 4})
    no_attack = _point(layer="isotropic")
    kept = largest_budget([*capped, other_seed, no_attack])
    assert kept == [capped[1], other_seed, no_attack]


def test_committed_frontier_json_has_the_schema() -> None:
    path = Path(__file__).resolve().parents[2] / "docs" / "privacy_frontier.json"
    points = json.loads(path.read_text())
    check_points(points)
    layers = {point["layer"] for point in points}
    assert set(BASELINES) <= layers
    for point in points:
        context_free = point["layer"] != "learned_sequence"
        assert (point["bayes_attack_failure"] is not None) == context_free, point["layer"]
        assert 0.0 <= point["retrieval_at_1"] <= 1.0


def test_adversarial_objective_trains_layer_and_adversary_and_raises_the_noise(study) -> None:  # type: ignore[no-untyped-def]
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from mi_losses.apps.privacy.sequence import SequenceObfuscation
    from mi_losses.evaluation.sequences import SequenceDataset

    data, encoder = study
    with pytest.raises(ValueError, match="candidates"):
        SequenceObfuscation(encoder, objective="adversarial")
    pl.seed_everything(0, verbose=False)
    task = SequenceObfuscation(
        encoder, alpha=1.0, objective="adversarial", hidden_dim=8, candidates=data.candidates,
        max_length=S, init_std=0.3,
    )  # fmt: skip
    assert task.adversary is not None
    clean, mask = data.table[data.train.input_ids], data.train.noise_mask

    def mean_std() -> float:
        task.noise_layer.eval()
        with torch.no_grad():
            return float(task.noise_layer(clean, mask).stds[mask].mean())

    std_before = mean_std()
    attack_before = [p.detach().clone() for p in task.adversary.attack.parameters()]
    loader = DataLoader(SequenceDataset(data.train), batch_size=16)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=8, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, train_dataloaders=loader)
    assert trainer.global_step == 8  # the layer's steps (the adversary has its own optimizer)
    after = task.adversary.attack.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(attack_before, after, strict=True))
    # alpha 1: the layer only maximises the adversary's cross-entropy, so its noise grows.
    assert mean_std() > std_before * 1.05


def test_one_token_sweep_json_schema() -> None:
    """The one-token sweep's points (measured in 0.1 by the removed ``apps.minilm.sweep``)."""
    required = (
        "objective",
        "alpha",
        "retrieval_at_1",
        "sentence_cosine",
        "bayes_attack_failure",
        "exact_mi_nats_per_token",
    )
    path = Path(__file__).resolve().parents[2] / "docs" / "minilm_sweep_frontier.json"
    points = json.loads(path.read_text())
    assert isinstance(points, list) and points
    objectives = {point["objective"] for point in points}
    assert {"isotropic", "frequency_rule", "vocabulary", "sub_batch"} <= objectives
    for point in points:
        assert set(required) <= set(point), point
        assert isinstance(point["objective"], str)
        for key in required[1:]:
            assert isinstance(point[key], (int, float)) and math.isfinite(point[key]), key
        for key in ("retrieval_at_1", "bayes_attack_failure"):
            assert 0.0 <= point[key] <= 1.0
        assert -1.0 <= point["sentence_cosine"] <= 1.0
        assert point["exact_mi_nats_per_token"] >= -0.5
