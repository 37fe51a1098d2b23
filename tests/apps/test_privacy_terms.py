"""The privacy terms of the context-free layer (issue 26, item 2) on a tiny checkpoint.

Each term's value is checked against a direct evaluation written here: the entropy log loss and
the InfoNCE lower bound in float64 from the batch's own means, stds and noisy embeddings.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from mi_losses.apps.hf.data import HFTextDataModule
from mi_losses.apps.privacy.terms import TermObfuscation, TokenTermSettings, term_task
from mi_losses.losses import SubBatchMutualInformation

pytest.importorskip("transformers")


def _setup(folder: str, settings: TokenTermSettings) -> tuple[TermObfuscation, dict]:  # type: ignore[type-arg]
    from transformers import AutoConfig

    pl.seed_everything(0, verbose=False)
    data = HFTextDataModule(folder, num_val=16, batch_size=8, eval_batch_size=8)
    data.setup()
    vocab_size = int(AutoConfig.from_pretrained(folder).vocab_size)
    task = term_task(settings, vocab_size, model_name_or_path=folder, hidden_dim=8)
    task.set_training_counts(data.train_token_counts(vocab_size))
    if settings.num_prototypes:
        table = task.wrapper.embedding_table.detach()
        task.noise_layer.fit_prototypes(table, task.support)  # type: ignore[operator]
    return task, next(iter(data.train_dataloader()))


def _entropy_log_loss(stds: torch.Tensor, mask: torch.Tensor) -> float:
    """mean over noised elements of -log sigma, minus 0.5 log(2 pi e) (MATH.md)."""
    sigma = stds.double()[mask]
    return float((-sigma.log()).mean()) - 0.5 * math.log(2 * math.pi * math.e)


def _infonce(
    noisy: torch.Tensor, centres: torch.Tensor, stds: torch.Tensor, mask: torch.Tensor
) -> float:
    """The InfoNCE lower bound at token granularity, pair by pair in float64 (MATH.md):
    queries are the noised tokens of the first half of the batch, components the second's."""
    noisy, centres, stds = (t.detach().double() for t in (noisy, centres, stds))
    half, length = mask.shape[0] // 2, mask.shape[1]
    queries = [(b, s) for b in range(half) for s in range(length) if mask[b, s]]
    components = [(b, s) for b in range(half, 2 * half) for s in range(length) if mask[b, s]]

    def log_density(y: torch.Tensor, j: tuple[int, int]) -> float:  # without the 2 pi constant
        return float(-0.5 * (((y - centres[j]) / stds[j]) ** 2).sum() - stds[j].log().sum())

    values = []
    for i in queries:
        own = log_density(noisy[i], i)
        total = 1.0 + sum(math.exp(log_density(noisy[i], j) - own) for j in components)
        values.append(-math.log(total / (len(components) + 1)))
    return sum(values) / len(values)


@pytest.mark.parametrize("term", ["vocabulary_mi", "sub_batch", "infonce"])
def test_each_term_plus_the_entropy_log_loss_is_what_it_says(
    tiny_checkpoints: dict[str, Path], term: str
) -> None:
    settings = TokenTermSettings(term=term, alpha=0.5, entropy_weight=0.7)  # type: ignore[arg-type]
    task, batch = _setup(str(tiny_checkpoints["bert"]), settings)
    mask, attention = batch["noise_mask"].bool(), batch["attention_mask"].bool()
    value, clean, out = task.privacy(batch["input_ids"], mask, attention)
    entropy = _entropy_log_loss(out.stds.detach(), mask)
    if term == "vocabulary_mi":
        mi = float(task.privacy_loss.component_losses["mutual_information_loss"])
    elif term == "sub_batch":
        arguments = (out.means, out.stds, mask, clean, out.noisy)
        mi = float(SubBatchMutualInformation(granularity="token")(*arguments))
    else:
        mi = _infonce(out.noisy, clean + out.means, out.stds, mask)
        assert mi <= math.log(int(mask[mask.shape[0] // 2 :].sum()) + 1)
    assert value.item() == pytest.approx(mi + 0.7 * entropy, rel=1e-4, abs=1e-4)
    value.backward()
    gradients = [p.grad for p in task.noise_layer.parameters() if p.requires_grad]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in gradients)


def test_the_entropy_term_raises_the_stds(tiny_checkpoints: dict[str, Path]) -> None:
    folder = str(tiny_checkpoints["bert"])
    stds = {}
    for weight in (0.0, 5.0):
        settings = TokenTermSettings(alpha=0.5, entropy_weight=weight)
        task, batch = _setup(folder, settings)
        optimizer = task.configure_optimizers()
        for _ in range(3):
            optimizer.zero_grad()
            task.training_step(batch, 0).backward()
            optimizer.step()
        with torch.no_grad():
            _, vocabulary_stds = task.noise_layer.vocabulary_parameters(  # type: ignore[operator]
                task.wrapper.embedding_table, task.support
            )
        stds[weight] = float(vocabulary_stds.log().mean())
    assert stds[5.0] > stds[0.0] + 0.01


def test_the_prototype_gates_are_trained(tiny_checkpoints: dict[str, Path]) -> None:
    settings = TokenTermSettings(alpha=0.5, num_prototypes=4, prototype_pull=0.5)
    task, batch = _setup(str(tiny_checkpoints["bert"]), settings)
    layer = task.noise_layer
    gate = layer.prototype_gate.detach().clone()  # type: ignore[union-attr]
    optimizer = task.configure_optimizers()
    task.training_step(batch, 0).backward()
    optimizer.step()
    assert not torch.equal(layer.prototype_gate.detach(), gate)  # type: ignore[union-attr]


def test_settings_are_checked_and_name_the_objective() -> None:
    assert TokenTermSettings().objective == "exact_vocabulary_mi"
    named = TokenTermSettings(term="sub_batch", entropy_weight=0.1, num_prototypes=512)
    assert named.objective == "sub_batch+entropy_0.1+prototypes_512_pull_1"
    exact = TokenTermSettings(num_prototypes=8, mean_scale=0.0)
    assert exact.objective == "exact_vocabulary_mi+prototypes_8_pull_1+mean_scale_0"
    with pytest.raises(ValueError, match="term must be one of"):
        TokenTermSettings(term="adversarial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\], got 2"):
        TokenTermSettings(alpha=2)
    with pytest.raises(ValueError, match="entropy_weight must be >= 0, got -1"):
        TokenTermSettings(entropy_weight=-1)
    with pytest.raises(ValueError, match="term must be one of"):
        TermObfuscation("nope")  # type: ignore[arg-type]
