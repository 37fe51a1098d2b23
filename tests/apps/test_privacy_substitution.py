"""The learned substitution channel on the privacy frontier, on tiny random data."""

from __future__ import annotations

import pytest
import torch

from mi_losses.apps.privacy.frontier import STYLES
from mi_losses.apps.privacy.substitution import (
    SubstitutionChannel,
    SubstitutionSettings,
    substitution_channel,
    train_substitution,
)
from mi_losses.evaluation.channels import ReleaseChannel
from mi_losses.evaluation.judge import judge
from mi_losses.evaluation.points import check_points
from mi_losses.mechanisms import release_log_posterior
from tests.apps.test_privacy_frontier import V, study  # noqa: F401  (the fixture)

SETTINGS = SubstitutionSettings(num_candidates=4, epsilon=2.0, learning_rate=0.1, batch_size=16)


def test_training_on_the_mutual_information_lowers_it(study) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    data, encoder = study
    with pytest.raises(ValueError, match="alpha"):
        train_substitution(encoder, data, 1.5, 1, 0, SETTINGS)
    layer, history = train_substitution(encoder, data, 1.0, 8, 0, SETTINGS)
    assert len(history) == 8
    assert history[-1]["mi"] < history[0]["mi"] - 0.05
    with torch.no_grad():
        assert float(layer.mutual_information(data.prior)) < history[0]["mi"]
    # Utility only: the channel moves towards releasing each token itself.
    keep, history = train_substitution(encoder, data, 0.0, 8, 0, SETTINGS)
    own = keep.log_probabilities()[data.candidates, 0].exp()  # the first candidate is itself
    assert history[-1]["mi"] > history[0]["mi"]
    fresh, _ = train_substitution(encoder, data, 0.0, 0, 0, SETTINGS)
    assert bool((own.mean() > fresh.log_probabilities()[data.candidates, 0].exp().mean()).all())


def test_the_judge_sees_the_exact_channel(study) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    data, encoder = study
    channel = substitution_channel(encoder, data, 0.5, 3, SETTINGS, seed=0)
    assert isinstance(channel, SubstitutionChannel)
    point = judge(
        channel, encoder, data, layer="learned_substitution", objective="exact_channel_mi",
        parameter="alpha", value=0.5, seed=0, batch_size=8,
    )  # fmt: skip
    check_points([point])
    assert point["bayes_attack_failure"] is not None
    assert point["exact_mi_nats_per_token"] is not None
    assert point["substitution_steps"] == 3 and point["channel_mi_nats_per_token"] > 0
    assert point["strongest_attack_failure"] == min(
        point["nn_failure"], point["bayes_attack_failure"]
    )
    # The attacker's posterior over the candidates is Bayes' rule on the learned channel.
    ids = data.val.input_ids[:2]
    mask = data.val.noise_mask[:2]
    draw = channel.draw(ids, mask)
    assert draw.released is not None and draw.log_posterior is not None
    released = draw.released[mask]
    expected = release_log_posterior(
        released, channel.log_channel[data.candidates], data.prior[data.candidates].log()
    )
    assert torch.allclose(draw.log_posterior[mask], expected)
    assert torch.equal(draw.embeddings[mask], data.table[data.candidates[released]])


def test_release_channel_takes_a_log_channel_for_substitution_only(study) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    data, _ = study
    common = (data.table, data.prior, data.candidates)
    with pytest.raises(ValueError, match="log_channel"):
        ReleaseChannel("substitution", 1.0, *common)
    with pytest.raises(ValueError, match="log_channel"):
        ReleaseChannel("santext", 1.0, *common, log_channel=torch.zeros(V, 3))
    assert "learned_substitution" in STYLES


def test_early_stopping_on_a_separate_draw_scores_the_shared_one(study) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from mi_losses.evaluation.judge import InversionSettings, shared_draws
    from mi_losses.evaluation.sequences import sequence_batches

    data, encoder = study
    channel = ReleaseChannel("santext", 1.0, data.table, data.prior, data.candidates)
    settings = InversionSettings(d_model=16, num_heads=2, batch_size=16, max_epochs=1)
    common = dict(layer="santext", objective="none", parameter="epsilon", value=1.0, seed=0)
    scored = judge(channel, encoder, data, inversion=settings, batch_size=8, **common)
    settings.selection_seed = 7
    held_out = judge(channel, encoder, data, inversion=settings, batch_size=8, **common)
    check_points([scored, held_out])
    # The curve starts with the untrained attack (the Bayes posterior's best candidate) on the
    # draw that selects: the scored draw (seed 0) or the separate one (seed 7).
    batches = sequence_batches(data.val, 8)

    def posterior_failure(seed: int) -> float:
        draws = shared_draws(channel, batches, seed)
        found = torch.cat(
            [
                d.log_posterior[b["noise_mask"]].argmax(-1)
                for d, b in zip(draws, batches, strict=True)
            ]
        )
        ids = torch.cat([b["input_ids"][b["noise_mask"]] for b in batches])
        return 1.0 - float((data.candidates[found] == ids).float().mean())

    assert scored["inversion_curve"][0]["failure"] == pytest.approx(posterior_failure(0))
    assert held_out["inversion_curve"][0]["failure"] == pytest.approx(posterior_failure(7))
    assert posterior_failure(0) != posterior_failure(7)
    # Both are scored on the shared draw (seed 0): the one-token attackers agree.
    assert held_out["bayes_attack_failure"] == scored["bayes_attack_failure"]
