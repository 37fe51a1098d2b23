"""``configs/hf/minilm.yaml`` is the case study's main job: the same settings, value for value.

Running both jobs gives the same report bit for bit (docs/hf.md, measured; too slow for the
suite); this test keeps the two files from drifting apart.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_generic_minilm_config_matches_the_case_study() -> None:
    old = yaml.safe_load((CONFIGS / "minilm" / "fit.yaml").read_text())
    new = yaml.safe_load((CONFIGS / "hf" / "minilm.yaml").read_text())
    assert new["seed_everything"] == old["seed_everything"]
    assert new["num_threads"] == old["num_threads"]
    ignored = {"logger", "callbacks"}
    assert {k: v for k, v in new["trainer"].items() if k not in ignored} == {
        k: v for k, v in old["trainer"].items() if k not in ignored
    }
    assert new["data"] == old["data"]
    model, layer = new["model"], new["model"]["noise_layer"]
    assert model["model_name_or_path"] is None and model["head"] == "base"
    assert layer["class_path"] == "mi_losses.noise.LearnedTokenNoise"
    for key in ("hidden_dim", "min_std", "max_std", "init_std", "mean_scale"):
        assert layer["init_args"][key] == old["model"][key], key
    assert layer["init_args"]["vocab_size"] == 30522 and old["model"]["warm_start_k"] > 0
    for key in ("learning_rate", "warm_start_k", "warm_start_std"):
        assert model[key] == old["model"][key], key
    assert old["model"]["objective"] == "vocabulary"
    assert model["privacy_loss"]["class_path"].endswith("VocabularyMutualInformation")
    assert old["model"]["utility"] == "retrieval"
    assert model["utility_loss"]["class_path"].endswith("RetrievalDistillation")
    assert model["utility_loss"]["init_args"]["temperature"] == 0.05  # utility_loss's default
    assert model["privacy_weight"] == old["model"]["alpha"]
    assert model["utility_weight"] == 1.0 - old["model"]["alpha"]
    reports = [c for c in new["trainer"]["callbacks"] if c["class_path"].endswith("Report")]
    (old_report,) = [c for c in old["trainer"]["callbacks"] if c["class_path"].endswith("Report")]
    assert {k: v for k, v in reports[0]["init_args"].items() if k != "report_path"} == {
        k: v for k, v in old_report["init_args"].items() if k != "report_path"
    }
