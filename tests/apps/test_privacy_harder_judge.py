"""The harder judge's options on tiny random data: more inversion attackers (one larger, with a
learning-rate schedule) and the strongest failure over all of them."""

from __future__ import annotations

import json

import pytest
import torch

from mi_losses.attacks.inversion import InversionAttack, warmup_cosine
from mi_losses.evaluation.channels import ReleaseChannel
from mi_losses.evaluation.judge import InversionSettings, judge, train_inversion
from mi_losses.evaluation.points import REQUIRED_KEYS, check_points, format_attackers, format_points
from mi_losses.evaluation.sequences import TokenizedSequences, sequence_batches
from tests.apps.test_privacy_frontier import study  # noqa: F401  (the fixture)

SMALL = InversionSettings(d_model=16, num_heads=2, batch_size=16, max_epochs=1)
LARGER = InversionSettings(
    d_model=32, num_layers=3, num_heads=4, batch_size=16, max_epochs=2, learning_rate=2e-3,
    schedule="cosine", selection_seed=5,
)  # fmt: skip


def test_extra_attackers_enter_the_strongest_failure(study) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    data, encoder = study
    channel = ReleaseChannel("santext", 1.0, data.table, data.prior, data.candidates)
    point = judge(
        channel, encoder, data, layer="santext", objective="none", parameter="epsilon",
        value=1.0, seed=0, inversion=SMALL, batch_size=8, extra_inversions=[LARGER],
    )  # fmt: skip
    check_points([point])
    (extra,) = point["extra_inversions"]
    assert extra["settings"]["d_model"] == 32 and extra["settings"]["schedule"] == "cosine"
    assert 0.0 <= extra["failure"] <= 1.0 and extra["curve"]
    assert point["strongest_attack_failure"] == min(
        point["nn_failure"],
        point["bayes_attack_failure"],
        point["inversion_failure"],
        extra["failure"],
    )
    assert "(cap 1+1" in format_points([point])
    # One row per point, every attacker in its own column with its size.
    header, _, row = format_attackers([point]).splitlines()
    assert header.count("attacker 2 fail") == 1
    assert f"| {extra['failure']:.3f} (" in row and "32x3, cosine) |" in row
    assert f"| {point['inversion_failure']:.3f} (" in row and "16x2) |" in row
    assert row.endswith("| shared | n/a |")
    # A strongest failure that ignores a lower extra attacker is rejected.
    low = dict(point, extra_inversions=[dict(extra, failure=0.0)])
    with pytest.raises(ValueError, match="lowest"):
        check_points([low])


def test_cosine_schedule_decays_to_zero_at_the_step_budget(study) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    data, _ = study
    channel = ReleaseChannel("santext", 1.0, data.table, data.prior, data.candidates)
    settings = InversionSettings(
        d_model=16, num_heads=2, batch_size=16, max_epochs=2, patience=100, schedule="cosine"
    )
    val = [
        {**batch, "embeddings": data.table[batch["input_ids"]]}
        for batch in sequence_batches(data.val, 8)
    ]
    attack = train_inversion(channel, data, val, settings, seed=0)
    assert attack.training_end["steps"] == 8  # 64 sequences, batches of 16, two epochs
    assert attack.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert [warmup_cosine(0, 4, step) for step in (0, 2, 4, 9)] == pytest.approx(
        [1.0, 0.5, 0.0, 0.0]
    )
    with pytest.raises(ValueError, match="schedule"):
        InversionAttack(torch.arange(3), torch.randn(3, 4), schedule="linear")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attack_text_fraction", "attack_on_layer_text"), [(0.0, False), (0.5, False), (0.5, True)]
)
def test_disjoint_attack_text_keeps_the_layer_and_the_attack_apart(
    study,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path,
    attack_text_fraction: float,
    attack_on_layer_text: bool,
) -> None:  # type: ignore[no-untyped-def]
    """``run``: the learned layer's trainer and the attack's trainer each record the training
    sequences they are given; with a fraction they never share one and together cover all
    (the control ``attack_on_layer_text``: the attack trains on the layer's part)."""
    import importlib

    import mi_losses.apps.privacy.substitution as substitution_module
    import mi_losses.evaluation as evaluation
    import mi_losses.huggingface as huggingface
    from mi_losses.apps.privacy import frontier
    from mi_losses.apps.privacy.substitution import SubstitutionSettings

    judge_module = importlib.import_module("mi_losses.evaluation.judge")  # not the function
    data, encoder = study
    monkeypatch.setattr(huggingface, "load_pretrained", lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluation, "SentenceEncoder", lambda model: encoder)
    monkeypatch.setattr(frontier, "load_study_data", lambda encoder, cache_dir: data)
    seen: dict[str, list[set[tuple[int, ...]]]] = {"layer": [], "attack": []}

    def spy(role: str, original):  # type: ignore[no-untyped-def]
        def loader(sequences: TokenizedSequences, batch_size: int, seed: int):  # type: ignore[no-untyped-def]
            seen[role].append({tuple(row) for row in sequences.input_ids.tolist()})
            return original(sequences, batch_size, seed)

        return loader

    for role, module in (("layer", substitution_module), ("attack", judge_module)):
        monkeypatch.setattr(module, "training_loader", spy(role, module.training_loader))
    points = frontier.run(
        str(tmp_path / "run.json"),
        frequency_ks=[3],
        substitution_alphas=[0.5],
        substitution=SubstitutionSettings(num_candidates=4, batch_size=8),
        learned_steps=2,
        inversion=SMALL,
        attack_text_fraction=attack_text_fraction,
        attack_text_seed=1,
        attack_on_layer_text=attack_on_layer_text,
    )
    everything = {tuple(row) for row in data.train.input_ids.tolist()}
    assert len(everything) == len(data.train)  # distinct rows: a shared row would be seen
    (layer,) = seen["layer"]  # one learned layer trained; two points attacked
    first, second = seen["attack"]
    assert first == second
    if attack_on_layer_text:
        assert layer == first and len(layer) == 32
    elif attack_text_fraction:
        assert not layer & first
        assert layer | first == everything
        assert len(first) == 32 and len(layer) == 32
    else:
        assert layer == first == everything
    for point in points:
        assert point["attack_train_sequences"] == len(first)
        assert point["layer_train_sequences"] == len(layer)
        assert point["attack_text_fraction"] == attack_text_fraction
    if not attack_text_fraction:
        with pytest.raises(ValueError, match="attack_on_layer_text needs an attack_text_fraction"):
            frontier.run(str(tmp_path / "bad.json"), attack_on_layer_text=True)


def test_combine_attackers_writes_the_json_and_one_row_per_point(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mi_losses.apps.privacy.frontier import HARDER_END, HARDER_START, combine_attackers

    base = {key: 0.4 for key in REQUIRED_KEYS}
    base |= {"layer": "laplace_dp", "objective": "none", "parameter": "epsilon", "value": 80.0}
    first = base | {
        "seed": 0, "inversion_failure": 0.3, "strongest_attack_failure": 0.2,
        "inversion_epochs": 12.5, "inversion_stopped_early": True,
        "inversion_settings": {"d_model": 128, "num_layers": 2, "schedule": "constant"},
        "extra_inversions": [{
            "failure": 0.2, "epochs": 40.0, "stopped_early": False,
            "settings": {"d_model": 192, "num_layers": 3, "schedule": "cosine"},
        }],
        "attack_text_fraction": 0.5, "attack_train_sequences": 638, "cpu_seconds": 512.3,
    }  # fmt: skip
    second = base | {"seed": 1, "inversion_failure": None}  # no attack run, nothing recorded
    (tmp_path / "a.json").write_text(json.dumps([first]))
    (tmp_path / "b.json").write_text(json.dumps([second]))
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{HARDER_START}\nold\n{HARDER_END}\noutro\n")
    out = tmp_path / "harder.json"
    combine_attackers([str(tmp_path / "a.json"), str(tmp_path / "b.json")], str(out), str(page))
    assert json.loads(out.read_text()) == [first, second]  # not averaged over seeds
    text = page.read_text()
    assert "old" not in text and text.startswith("intro") and text.endswith("outro\n")
    rows = text.split(HARDER_START)[1].split(HARDER_END)[0].strip().splitlines()[2:]
    assert rows == [
        "| laplace_dp | epsilon 80 | 0 | 0.400 | 0.400 | 0.400 | 0.300 (12.5; 128x2) | "
        "0.200 (cap; 192x3, cosine) | 0.200 | 638 disjoint | 512 |",
        "| laplace_dp | epsilon 80 | 1 | 0.400 | 0.400 | 0.400 | n/a | n/a | 0.400 | shared | n/a |",
    ]
    control = format_attackers([first | {"attack_on_layer_text": True}])
    assert control.endswith("| 638 of the layer's | 512 |")
    with pytest.raises(ValueError, match="lowest"):
        (tmp_path / "c.json").write_text(json.dumps([first | {"strongest_attack_failure": 0.3}]))
        combine_attackers([str(tmp_path / "c.json")], str(out), None)


def test_committed_harder_judge_json_has_the_schema() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "privacy_harder_judge.json"
    points = json.loads(path.read_text())
    check_points(points)  # includes: the strongest failure is the lowest over every attacker
    disjoint = [point for point in points if point.get("attack_text_fraction")]
    assert disjoint
    for point in disjoint:
        # The two parts of the 1,276 training sequences, and the larger attacker beside.
        assert point["layer_train_sequences"] + point["attack_train_sequences"] == 1276
        assert point["inversion_settings"]["selection_seed"] is not None
        assert [a["settings"]["d_model"] for a in point["extra_inversions"]] == [192]
