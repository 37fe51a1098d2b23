"""The issue's demonstration: tiny checkpoints saved with ``save_pretrained`` train end to end
from ``configs/hf/causal_lm.yaml`` and ``configs/hf/encoder.yaml`` on CPU, offline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from mi_losses.apps.hf.__main__ import run
from mi_losses.evaluation import format_terminal

pytest.importorskip("transformers")

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "hf"


def _fit(config: str, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(tmp_path)
    path = _quick_report(CONFIGS / config, tmp_path)
    cli = run(
        [
            "fit",
            "--config",
            str(path),
            "--model.model_name_or_path",
            str(folder),
            "--trainer.max_steps",
            "3",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert cli.trainer.global_step == 3
    return cli  # type: ignore[return-value]


def _quick_report(config: Path, tmp_path: Path) -> Path:
    """``config`` with the report's inversion attacks capped at 30 steps each (the three of
    the uncapped report take about 70 s on a CPU), written to ``tmp_path``."""
    settings = yaml.safe_load(config.read_text())
    for callback in settings["trainer"]["callbacks"]:
        if callback["class_path"].endswith("HFObfuscationReport"):
            callback.setdefault("init_args", {})["inversion_max_steps"] = 30
    path = tmp_path / config.name
    path.write_text(yaml.safe_dump(settings))
    return path


def _rows(tmp_path: Path, name: str) -> list[dict[str, str]]:
    (metrics,) = (tmp_path / "outputs" / name / "logs").glob("version_*/metrics.csv")
    with metrics.open() as handle:
        return list(csv.DictReader(handle))


def _per_step(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_decoder_trains_from_causal_lm_yaml(
    kind: str, tiny_checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = _fit("causal_lm.yaml", tiny_checkpoints[kind], tmp_path, monkeypatch)
    assert type(cli.model.noise_layer).__name__ == "SequenceGaussianNoiseLayer"
    rows = _rows(tmp_path, "hf_causal_lm")
    # Every component of the privacy and the utility loss, at every step.
    for key in (
        "train/mi/mutual_information_loss_step",
        "train/mi/gaussian_mixture_entropy_loss_step",
        "train/mi/std_log_loss_step",
        "train/utility/distillation_loss_step",
        "train/loss",
    ):
        values = _per_step(rows, key)
        assert len(values) == 3, key
    report = json.loads((tmp_path / "outputs/hf_causal_lm/report.json").read_text())
    assert report["context_free"] is False
    learned = report["results"]["learned"]
    for key in ("nn_failure_cosine", "nn_failure_l2", "sub_batch_mi_upper", "sentence_cosine"):
        assert learned[key] is not None, key
    assert "bayes_attack_failure" not in learned  # needs a context-free layer
    assert learned["tokens_attacked"] > 0


def test_a_missing_model_is_one_line_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        run(
            [
                "fit",
                "--config",
                str(CONFIGS / "encoder.yaml"),
                "--model.model_name_or_path",
                str(tmp_path / "no_such_model"),
            ]
        )
    assert raised.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) <= 2, error
    assert "--model.model_name_or_path" in error[0] and "no_such_model" in error[0]
    assert "Traceback" not in "\n".join(error)


@pytest.mark.slow
def test_encoder_trains_from_encoder_yaml_without_third_party_noise(
    tiny_checkpoints: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
) -> None:
    """One run (about a minute on CPU): every component per step, the context-free report,
    and nothing printed by third parties (tips, warnings)."""
    caplog.set_level("INFO")
    _fit("encoder.yaml", tiny_checkpoints["bert"], tmp_path, monkeypatch)
    out, err = capfd.readouterr()
    printed = "\n".join([out, err, caplog.text])
    warned = [str(w.message) for w in recwarn]
    for noise in ("💡 Tip", "litlogger", "LeafSpec", "module(s) in eval mode"):
        assert noise not in printed, noise
        assert not [message for message in warned if noise in message], noise
    rows = _rows(tmp_path, "hf_encoder")
    assert len(_per_step(rows, "train/mi/mutual_information_loss_step")) == 3
    assert len(_per_step(rows, "train/utility/distillation_loss_step")) == 3
    report = json.loads((tmp_path / "outputs/hf_encoder/report.json").read_text())
    assert report["context_free"] is True
    assert set(report["results"]) == {"learned", "isotropic_equal_utility", "frequency_rule"}
    learned = report["results"]["learned"]
    for key in (
        "exact_mi_nats_per_token",
        "bayes_attack_failure",
        "bayes_top5_failure",
        "nn_failure_cosine",
        "nn_failure_l2",
        "fano_floor",
    ):
        assert isinstance(learned[key], float), key
    assert 0 <= learned["exact_mi_nats_per_token"] <= learned["prior_entropy_nats"] + 1e-6
    table = format_terminal(report)
    assert table in out and max(len(line) for line in table.splitlines()) <= 80
