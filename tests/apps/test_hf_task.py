"""The generic task on tiny checkpoints: training steps, both privacy paths, the report."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from mi_losses.apps.hf.data import HFTextDataModule, file_texts
from mi_losses.apps.hf.report import HFObfuscationReport
from mi_losses.apps.hf.task import HFObfuscation
from mi_losses.evaluation import ROW_ATTACKS, format_table
from mi_losses.losses import (
    GaussianMixtureEntropy,
    HiddenStateDistillation,
    LogitDistillation,
    VocabularyMutualInformation,
)
from mi_losses.noise import (
    GaussianNoiseLayer,
    SequenceGaussianNoiseLayer,
    TokenNoise,
    as_token_noise,
)

pytest.importorskip("transformers")


def _trainer(steps: int, callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=1,
        val_check_interval=steps,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def test_vocabulary_objective_with_a_library_layer_trains_and_reports(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """Llama-style decoder, context-free library layer, exact known-prior MI, hidden-state utility."""
    folder = str(tiny_checkpoints["llama"])
    pl.seed_everything(0, verbose=False)
    task = HFObfuscation(
        folder,
        head="causal_lm",
        noise_layer=partial(GaussianNoiseLayer, hidden_dim=16, init_std=0.05),
        privacy_loss=VocabularyMutualInformation(),
        utility_loss=HiddenStateDistillation(metric="mse", pooling="token"),
        privacy_weight=0.5,
        utility_weight=0.5,
    )
    data = HFTextDataModule(folder, num_val=16, batch_size=8, eval_batch_size=8)
    before = [p.detach().clone() for p in task.noise_layer.parameters()]
    report = HFObfuscationReport(
        str(tmp_path / "report.json"),
        baselines=False,
        inversion_max_steps=2,  # two steps of the inversion attack: the columns, not its strength
        inversion_val_check_interval=1,
    )
    _trainer(2, [report]).fit(task, data)
    assert task.support.numel() > 0  # the training prior was set in setup()
    after = list(task.noise_layer.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert "mutual_information_loss" in task.privacy_loss.component_losses
    assert report.report is not None and report.report["context_free"] is True
    learned = report.report["results"]["learned"]
    assert learned["exact_mi_nats_per_token"] <= learned["prior_entropy_nats"] + 1e-6
    assert 0.0 <= learned["bayes_attack_failure"] <= 1.0
    assert {"nn_failure_cosine", "nn_failure_l2", "fano_floor"} <= set(learned)
    # The learned inversion attack ran on the report's own draw (add_inversion checks it) and
    # the strongest attack is the lowest failure of the row's attackers.
    assert 0.0 <= learned["inversion_failure"] <= 1.0
    assert learned["inversion_stopped_early"] is False  # the step cap ended it
    attacks = [learned[key] for key in ROW_ATTACKS if learned.get(key) is not None]
    assert "inversion_failure" in ROW_ATTACKS and len(attacks) == len(ROW_ATTACKS)
    assert learned["strongest_attack_failure"] == min(attacks)
    assert report.report["inversion_settings"]["max_steps"] == 2
    table = format_table(report.report)
    assert "| inversion fail | strongest fail |" in table
    # The trained layer is saved next to the report and reloads to the same layer.
    saved = Path(report.report["noise_layer"])
    assert saved == tmp_path / "noise_layer"
    assert sorted(path.name for path in saved.iterdir()) == ["config.json", "model.safetensors"]
    loaded = GaussianNoiseLayer.from_pretrained(saved)
    vocabulary = task.wrapper.embedding_table.detach()
    with torch.no_grad():
        trained = task.noise_layer.vocabulary_parameters(vocabulary)
        reloaded = loaded.vocabulary_parameters(vocabulary)
    for name, mine, theirs in zip(("means", "stds"), trained, reloaded, strict=True):
        assert torch.equal(mine, theirs), name


def test_the_token_view_of_a_context_free_layer() -> None:
    layer = GaussianNoiseLayer(embedding_dim=6, hidden_dim=8)
    view = as_token_noise(layer)
    assert isinstance(view, TokenNoise)
    table = torch.randn(9, 6)
    ids = torch.tensor([[3, 1, 3]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    out = view(ids, table, mask)
    torch.testing.assert_close(out.stds, layer(table[ids]).stds)
    assert as_token_noise(SequenceGaussianNoiseLayer(embedding_dim=8, num_heads=2)) is None


def test_bad_combinations_fail_at_construction(tiny_checkpoints: dict[str, Path]) -> None:
    folder = str(tiny_checkpoints["gpt2"])
    with pytest.raises(ValueError, match="needs a context-free noise layer"):
        HFObfuscation(
            folder,
            head="causal_lm",
            noise_layer=partial(SequenceGaussianNoiseLayer, num_heads=2),
            privacy_loss=VocabularyMutualInformation(),
        )
    with pytest.raises(TypeError, match="privacy_loss must be a MutualInformationLoss"):
        HFObfuscation(folder, head="causal_lm", privacy_loss=GaussianMixtureEntropy())
    with pytest.raises(ValueError, match="privacy_weight must be >= 0"):
        HFObfuscation(folder, head="causal_lm", privacy_weight=-1.0)


def test_sub_batch_objective_with_a_sequence_layer_steps(tiny_checkpoints: dict[str, Path]) -> None:
    folder = str(tiny_checkpoints["gpt2"])
    pl.seed_everything(0, verbose=False)
    task = HFObfuscation(
        folder,
        head="causal_lm",
        noise_layer=partial(SequenceGaussianNoiseLayer, hidden_dim=16, num_heads=2),
        utility_loss=LogitDistillation(temperature=2.0),
    )
    data = HFTextDataModule(folder, num_val=16, batch_size=8, eval_batch_size=8)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    loss = task.training_step(batch, 0)
    loss.backward()
    assert bool(torch.isfinite(loss))
    grad = task.noise_layer.head.std_head.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert not any(p.grad is not None for p in task.wrapper.model.parameters())
    assert "distillation_loss" in task.utility_loss.component_losses
    # Special tokens and padding are never noised; GPT-2 pads with <|endoftext|>.
    assert not bool((batch["noise_mask"] & ~batch["attention_mask"]).any())


def test_text_file_corpus(tmp_path: Path) -> None:
    text = "\n\n".join(f"paragraph {i} " + " ".join(["word"] * 30) for i in range(10))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    train, val = file_texts(str(path), words_per_chunk=10, val_fraction=0.3)
    assert len(val) == 9 and len(train) == 21  # 3 and 7 paragraphs of 3 chunks
    assert not {t for t in train if t.startswith("paragraph")} & set(val)
    with pytest.raises(ValueError, match="at least two paragraphs"):
        path.write_text("one paragraph only")
        file_texts(str(path))
