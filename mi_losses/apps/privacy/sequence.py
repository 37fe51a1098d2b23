"""Train a sequence-dependent noise layer on the library's sample-based estimators.

:class:`~mi_losses.noise.SequenceGaussianNoiseLayer` reads the whole clean sequence to choose
each position's mean and std, so no known-prior (vocabulary) MI applies; the privacy term is one
of the estimators that need only samples, at token granularity:

- ``"sub_batch"``: the sub-batch (L1Out) estimate, an upper bound in expectation
  (:class:`~mi_losses.losses.SubBatchMutualInformation`);
- ``"infonce"``: its InfoNCE lower bound from the same pass
  (:func:`~mi_losses.functional.mutual_information_bounds`), capped at ``log(components + 1)``.

``loss = alpha * I + (1 - alpha) * U`` with the MiniLM study's utility term ``U``
(:func:`~mi_losses.apps.minilm.task.utility_loss`). Only the noise layer is trained.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch

from mi_losses.apps.minilm.task import Utility, utility_loss
from mi_losses.functional import mutual_information_bounds
from mi_losses.losses import SubBatchMutualInformation
from mi_losses.noise import SequenceGaussianNoiseLayer

SequenceObjective = Literal["sub_batch", "infonce"]


class SequenceObfuscation(pl.LightningModule):
    """A :class:`~mi_losses.noise.SequenceGaussianNoiseLayer` trained before a frozen encoder.

    Args:
        encoder: the frozen :class:`~mi_losses.apps.minilm.model.MiniLMEncoder` (or any module
            with ``word_embedding_table`` and ``sentence_embedding``).
        alpha: weight of the privacy term in ``[0, 1]``.
        objective: ``"sub_batch"`` or ``"infonce"``.
        utility: ``"cosine"`` or ``"retrieval"``.
        hidden_dim: width of the layer's encoder.
        num_layers: its transformer layers.
        init_std: ``sigma`` at initialisation.
        max_std: upper bound of ``sigma``.
        mean_scale: bound of ``|mu|`` per coordinate.
        learning_rate: Adam learning rate.
    """

    def __init__(
        self,
        encoder: Any,
        alpha: float = 0.001,
        objective: SequenceObjective = "sub_batch",
        utility: Utility = "retrieval",
        hidden_dim: int = 64,
        num_layers: int = 1,
        init_std: float = 0.05,
        max_std: float = 4.0,
        mean_scale: float = 0.05,
        learning_rate: float = 1e-2,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if objective not in ("sub_batch", "infonce"):
            raise ValueError(f"objective must be 'sub_batch' or 'infonce', got {objective!r}")
        self.save_hyperparameters(ignore=["encoder"])
        self.encoder: Any = encoder
        table = encoder.word_embedding_table
        self.noise_layer = SequenceGaussianNoiseLayer(
            embedding_dim=int(table.shape[1]),
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            num_heads=4,
            feedforward_dim=2 * hidden_dim,
            init_std=init_std,
            max_std=max_std,
            mean_scale=mean_scale,
        )
        self.mi_loss = SubBatchMutualInformation(granularity="token")
        self.alpha, self.objective, self.utility = alpha, objective, utility
        self.learning_rate = learning_rate

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        noise_mask = batch["noise_mask"].bool()
        attention_mask = batch["attention_mask"].bool()
        table = self.encoder.word_embedding_table
        clean = table[batch["input_ids"]].detach()
        out = self.noise_layer(clean, noise_mask, attention_mask=attention_mask)
        arguments = (out.means, out.stds, noise_mask, clean, out.noisy)
        if self.objective == "sub_batch":
            privacy = self.mi_loss(*arguments)
        else:
            privacy = mutual_information_bounds(*arguments, granularity="token").lower
        encoder = self.encoder
        with torch.no_grad():
            clean_sentence = encoder.sentence_embedding(clean, attention_mask)
        noisy_sentence = encoder.sentence_embedding(out.noisy, attention_mask)
        utility = utility_loss(clean_sentence, noisy_sentence, self.utility)
        loss = self.alpha * privacy + (1.0 - self.alpha) * utility
        self.log_dict(
            {
                "train/privacy": privacy.detach(),
                "train/utility_loss": utility.detach(),
                "train/std_mean": out.stds.detach()[noise_mask].mean(),
            },
            on_step=True,
            batch_size=int(noise_mask.shape[0]),
        )
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.noise_layer.parameters(), lr=self.learning_rate)
