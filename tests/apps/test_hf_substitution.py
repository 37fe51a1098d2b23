"""The learned discrete channel in the main job, on tiny random checkpoints (offline): the
wrapper releases tokens, the task trains the logits through the straight-through draw on the
exact channel MI (logged per component and step), the report judges it as the privacy frontier
does, the trained layer is saved and reloads to the same channel, bad combinations fail."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from mi_losses.apps.hf.__main__ import run
from mi_losses.apps.hf.data import HFTextDataModule
from mi_losses.apps.hf.report import HFObfuscationReport
from mi_losses.apps.hf.task import HFObfuscation
from mi_losses.callbacks import ComponentLossLogger
from mi_losses.huggingface import NoisyInputEmbeddingsModel, load_pretrained
from mi_losses.losses import (
    RetrievalDistillation,
    SubstitutionMutualInformation,
    VocabularyMutualInformation,
)
from mi_losses.mechanisms import LearnedSubstitution, Release
from mi_losses.noise import GaussianNoiseLayer

pytest.importorskip("transformers")

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "hf"


def _vocab_size(folder: Path) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(folder).vocab_size)


def _task(folder: Path, **arguments: object) -> HFObfuscation:
    layer = partial(LearnedSubstitution, vocab_size=_vocab_size(folder), num_candidates=4)
    settings: dict[str, object] = {
        "noise_layer": layer,
        "privacy_loss": SubstitutionMutualInformation(prior_smoothing=0.5),
        "utility_loss": RetrievalDistillation(),
        "privacy_weight": 0.5,
        "utility_weight": 0.5,
        "learning_rate": 0.1,
        **arguments,
    }
    return HFObfuscation(str(folder), **settings)  # type: ignore[arg-type]


def test_wrapper_releases_tokens_and_trains_through_the_model(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    model = load_pretrained(str(tiny_checkpoints["bert"]))
    table = model.get_input_embeddings().weight.detach()
    allowed = torch.arange(4, table.shape[0], 2)  # outputs: every other token
    layer = LearnedSubstitution.nearest(table, table, 3, epsilon=2.0, allowed=allowed)
    wrapped = NoisyInputEmbeddingsModel(model, layer)
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 8, 10, 3, 0]])
    attention = ids != 0
    mask = attention & (ids > 3)
    torch.manual_seed(0)
    run = wrapped(ids, attention, mask)
    assert isinstance(run.noisy, Release)
    released = run.noisy.released
    assert bool(torch.isin(released[mask], allowed).all()) and bool((released[~mask] == -1).all())
    assert torch.equal(run.noisy.noisy[mask], table[released[mask]])
    assert torch.equal(run.noisy.noisy[~mask], run.clean_input_embeddings[~mask])
    run.output.last_hidden_state.square().sum().backward()
    assert layer.logits.grad is not None and bool(layer.logits.grad.abs().sum() > 0)
    assert not any(p.grad is not None for p in model.parameters())
    with pytest.raises(TypeError, match="use release"):
        wrapped.add_noise(run.clean_input_embeddings, mask)
    # From its directory, in front of the model: the same channel, the same draw.
    loaded = NoisyInputEmbeddingsModel(model, layer.save_pretrained(tmp_path / "layer"))
    assert isinstance(loaded.noise_layer, LearnedSubstitution)
    torch.manual_seed(0)
    again = loaded(ids, attention, mask)
    assert isinstance(again.noisy, Release) and torch.equal(again.noisy.released, released)
    with pytest.raises(ValueError, match="must have vocab_size = num_outputs"):
        NoisyInputEmbeddingsModel(model, LearnedSubstitution(table.shape[1], table.shape[0] + 1, 3))


def test_the_task_trains_logs_reports_and_saves_the_channel(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    folder = tiny_checkpoints["bert"]
    pl.seed_everything(0, verbose=False)
    task = _task(folder)
    data = HFTextDataModule(str(folder), num_val=16, batch_size=8, eval_batch_size=8)
    report = HFObfuscationReport(
        str(tmp_path / "report.json"),
        inversion_max_steps=2,  # two steps of the inversion attack: the columns, not its strength
        inversion_val_check_interval=1,
    )
    logger = pl.loggers.CSVLogger(str(tmp_path), name="logs")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=1,
        val_check_interval=3,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ComponentLossLogger(module_attribute="privacy_loss", prefix="mi"), report],
    )
    layer = task.noise_layer
    assert isinstance(layer, LearnedSubstitution) and not layer.initialised
    start: list[torch.Tensor] = []
    original_setup = task.setup

    def setup(stage: str) -> None:  # the logits right after the candidates are set
        original_setup(stage)
        start.append(layer.logits.detach().clone())

    task.setup = setup  # type: ignore[method-assign]
    trainer.fit(task, data)
    # The candidates come from the training text; three steps moved the logits.
    assert layer.initialised and bool(torch.isin(layer.candidates, task.support).all())
    assert not torch.equal(start[0], layer.logits.detach())
    # The exact channel MI, per component and per step.
    (metrics,) = tmp_path.glob("logs/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    mi = [
        float(r["train/mi/mutual_information_loss_step"])
        for r in rows
        if r.get("train/mi/mutual_information_loss_step")
    ]
    rates = [float(r["train/substitution/rate"]) for r in rows if r.get("train/substitution/rate")]
    assert len(mi) == 3 and len(rates) == 3 and all(0.0 <= r <= 1.0 for r in rates)
    assert mi[0] == pytest.approx(
        float(
            SubstitutionMutualInformation(prior_smoothing=0.5)(
                _initial(layer, start[0]), task.train_counts
            )
        ),
        rel=1e-5,
    )
    # The report: every row judged by the frontier's attackers on one draw.
    assert report.report is not None and report.report["context_free"] is True
    results = report.report["results"]
    assert set(results) == {"learned", "santext", "frequency_rule"}
    for row in results.values():
        attacks = [row[k] for k in ("nn_failure", "bayes_attack_failure", "inversion_failure")]
        assert all(0.0 <= a <= 1.0 for a in attacks)
        assert row["strongest_attack_failure"] == min(attacks)
        assert 0.0 <= row["retrieval_at_1"] <= 1.0
    learned = results["learned"]
    prior = report.report["data"]["prior_smoothing"]
    expected = SubstitutionMutualInformation(prior_smoothing=prior)(layer, task.train_counts)
    assert learned["channel_mi_nats_per_token"] == pytest.approx(float(expected), rel=1e-5)
    assert report.report["inversion_settings"]["max_steps"] == 2
    # The trained layer, saved next to the report, is the same channel.
    saved = Path(report.report["noise_layer"])
    assert saved == tmp_path / "noise_layer"
    loaded = LearnedSubstitution.from_pretrained(saved)
    assert torch.equal(loaded.logits, layer.logits.detach())
    assert torch.equal(loaded.candidates, layer.candidates)
    assert json.loads((saved / "config.json").read_text())["arguments"]["num_candidates"] == 4


def _initial(layer: LearnedSubstitution, logits: torch.Tensor) -> LearnedSubstitution:
    """A copy of ``layer`` with the given ``logits``."""
    copy = LearnedSubstitution(**layer.config)
    copy.load_state_dict({"logits": logits, "candidates": layer.candidates})
    return copy


def test_bad_combinations_fail_at_construction(tiny_checkpoints: dict[str, Path]) -> None:
    folder = tiny_checkpoints["bert"]
    with pytest.raises(ValueError, match="go together; got the layer LearnedSubstitution"):
        _task(folder, privacy_loss=VocabularyMutualInformation())
    with pytest.raises(ValueError, match="go together; got the layer GaussianNoiseLayer"):
        _task(folder, noise_layer=GaussianNoiseLayer)
    with pytest.raises(ValueError, match="must have vocab_size = num_outputs"):
        _task(folder, noise_layer=partial(LearnedSubstitution, vocab_size=3, num_candidates=2))
    task = _task(folder)
    batch = {
        "input_ids": torch.tensor([[2, 5, 3]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.bool),
        "noise_mask": torch.tensor([[False, True, False]]),
    }
    with pytest.raises(RuntimeError, match="needs set_training_counts"):
        task.training_step(batch, 0)


@pytest.mark.slow
def test_the_main_job_yaml_trains_the_channel(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_checkpoints["bert"]
    monkeypatch.chdir(tmp_path)
    cli = run(
        [
            "fit",
            "--config",
            str(CONFIGS / "minilm.yaml"),
            "--model.model_name_or_path",
            str(folder),
            f"--model.noise_layer.init_args.vocab_size={_vocab_size(folder)}",
            "--model.noise_layer.init_args.num_candidates=4",
            "--trainer.max_steps=3",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks.init_args.inversion_max_epochs=0",
            "--data.num_val=16",
        ]
    )
    assert cli.trainer.global_step == 3
    assert isinstance(cli.model.noise_layer, LearnedSubstitution)
    (output,) = tmp_path.glob("outputs/*/report.json")
    report = json.loads(output.read_text())
    assert report["training"]["hyperparameters"]["privacy_weight"] == 0.003
    assert report["results"]["learned"]["inversion_failure"] is None
    assert LearnedSubstitution.from_pretrained(output.parent / "noise_layer").num_candidates == 4
