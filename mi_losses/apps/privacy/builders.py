"""How each layer of the privacy frontier is built: fixed layers and mechanisms, and the learned
layers trained on the study's text (the layer's part of it where the judge's text is disjoint).

Every builder takes the point's ``seed`` last and returns the
:class:`~mi_losses.evaluation.channels.StudyChannel` that
:func:`~mi_losses.evaluation.judge.judge` attacks.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mi_losses.apps.privacy.sequence import LayerKind
from mi_losses.apps.privacy.terms import TokenTermSettings
from mi_losses.evaluation.channels import (
    GaussianTokenChannel,
    ReleaseChannel,
    SequenceChannel,
    StudyChannel,
)
from mi_losses.evaluation.sequences import SequenceDataset, StudyData
from mi_losses.losses import AdversarySettings
from mi_losses.noise import TokenNoise


def gaussian_channel(layer: TokenNoise, data: StudyData, seed: int) -> StudyChannel:
    """A fixed context-free layer (``seed`` only seeds the attacker)."""
    return GaussianTokenChannel(layer, data.table, data.prior, data.candidates)


def release_channel(mechanism: str, epsilon: float, data: StudyData, seed: int) -> StudyChannel:
    """A metric-DP mechanism (``seed`` also seeds the Laplace channel's Monte Carlo estimate)."""
    return ReleaseChannel(mechanism, epsilon, data.table, data.prior, data.candidates, seed=seed)


def fit_quietly(task: pl.LightningModule, steps: int, **data: Any) -> None:
    """Train ``task`` for ``steps`` optimizer steps, quietly, without validation."""
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, **data)
    task.eval()


def study_datamodule(task: Any, data: StudyData) -> Any:
    """The text data module of a context-free layer's task on the study's sequences (the
    layer's part where the judge's text is disjoint), the task's prior from their counts."""
    from mi_losses.apps.hf.data import HFTextDataModule

    datamodule = HFTextDataModule(seed=0, num_val=len(data.val))
    datamodule.train_sequences, datamodule.val_sequences = data.train, data.val
    task.set_training_counts(data.counts)
    return datamodule


def learned_token_channel(data: StudyData, alpha: float, steps: int, seed: int) -> StudyChannel:
    """The main job's context-free layer (exact vocabulary MI, retrieval utility), trained by
    :class:`~mi_losses.apps.hf.task.HFObfuscation` from the frequency rule (``k = 20``)."""
    from mi_losses.apps.hf.task import HFObfuscation
    from mi_losses.losses import RetrievalDistillation, VocabularyMutualInformation
    from mi_losses.noise import LearnedTokenNoise

    pl.seed_everything(seed, verbose=False)
    vocab_size = int(data.table.shape[0])
    task = HFObfuscation(
        noise_layer=partial(LearnedTokenNoise, init_std=0.15, vocab_size=vocab_size),
        privacy_loss=VocabularyMutualInformation(),
        utility_loss=RetrievalDistillation(temperature=0.05),
        privacy_weight=alpha,
        utility_weight=1.0 - alpha,
        warm_start_k=20,
    )
    fit_quietly(task, steps, datamodule=study_datamodule(task, data))
    layer = task.token_noise()
    assert layer is not None
    return GaussianTokenChannel(layer, data.table, data.prior, data.candidates)


def term_token_channel(
    data: StudyData, settings: TokenTermSettings, steps: int, seed: int
) -> StudyChannel:
    """The context-free layer trained on ``settings``' privacy term
    (:mod:`mi_losses.apps.privacy.terms`), prototypes fitted on the training text's tokens."""
    from mi_losses.apps.privacy.terms import term_task

    pl.seed_everything(seed, verbose=False)
    task = term_task(settings, int(data.table.shape[0]))
    layer: Any = task.noise_layer
    if settings.num_prototypes:
        layer.fit_prototypes(data.table, data.candidates, seed=seed)
    fit_quietly(task, steps, datamodule=study_datamodule(task, data))
    token_layer = task.token_noise()
    assert token_layer is not None
    return GaussianTokenChannel(token_layer, data.table, data.prior, data.candidates)


def learned_sequence_channel(
    encoder: torch.nn.Module,
    data: StudyData,
    objective: str,
    alpha: float,
    steps: int,
    seed: int,
    adversary: AdversarySettings | None = None,
    noise_layer: LayerKind = "sequence",
    nearest_attack: bool = False,
) -> StudyChannel:
    """A :class:`~mi_losses.noise.SequenceGaussianNoiseLayer` (or, ``noise_layer="token"``, a
    context-free :class:`~mi_losses.noise.LearnedTokenNoise`) trained on ``objective``."""
    from mi_losses.apps.privacy.sequence import SequenceObfuscation

    pl.seed_everything(seed, verbose=False)
    adversarial = objective == "adversarial"
    task = SequenceObfuscation(
        encoder,
        alpha=alpha,
        objective=objective,  # type: ignore[arg-type]
        candidates=data.candidates if adversarial else None,
        prior=data.prior if adversarial else None,
        adversary=adversary if adversarial else None,
        max_length=int(data.train.input_ids.shape[1]),
        layer=noise_layer,
        nearest_attack=nearest_attack,
    )
    loader = DataLoader(
        SequenceDataset(data.train),
        batch_size=16,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    fit_quietly(task, steps, train_dataloaders=loader)
    if task.adversary is not None:
        losses = task.pretrain_losses
        print(
            f"adversary: pre-training {len(losses)} steps, loss {losses[:1]} -> {losses[-1:]}; "
            f"restarts at {task.adversary.restarts}; pool {len(task.adversary.pool)}; "
            f"last strongest {task.adversary.last_strongest} "
            f"(losses {task.adversary.last_attack_losses})",
            flush=True,
        )
        for row in task.history[:: max(1, len(task.history) // 8)] + task.history[-1:]:
            print("  " + ", ".join(f"{key} {value:.4g}" for key, value in row.items()), flush=True)
    if noise_layer == "token":
        return GaussianTokenChannel(task.noise_layer, data.table, data.prior, data.candidates)  # type: ignore[arg-type]
    return SequenceChannel(task.noise_layer, data.table, data.prior, data.candidates)
