"""Train a sequence-dependent noise layer on the library's sample-based estimators.

:class:`~mi_losses.noise.SequenceGaussianNoiseLayer` reads the whole clean sequence to choose
each position's mean and std, so no known-prior (vocabulary) MI applies; the privacy term is one
of the estimators that need only samples, at token granularity:

- ``"sub_batch"``: the sub-batch (L1Out) estimate, an upper bound in expectation
  (:class:`~mi_losses.losses.SubBatchMutualInformation`);
- ``"infonce"``: its InfoNCE lower bound from the same pass
  (:func:`~mi_losses.functional.mutual_information_bounds`), capped at ``log(components + 1)``;
- ``"adversarial"``: not an estimator but an adversary: an
  :class:`~mi_losses.attacks.inversion.InversionAttack` (without a posterior) trained alongside
  the layer. Each step first takes ``attack_steps`` attacker steps on the detached release
  (minimising its cross-entropy at the noised positions), then one layer step with
  ``I = - (the attacker's cross-entropy)`` on the same release: the layer is rewarded for what
  this attacker cannot recover from the whole sequence.

``loss = alpha * I + (1 - alpha) * U`` with the main job's utility term ``U`` on the sentence
embeddings (:class:`~mi_losses.losses.RetrievalDistillation` or ``1 - cos``,
:class:`~mi_losses.losses.HiddenStateDistillation`). Only the noise layer is trained by it.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from mi_losses.attacks.inversion import AttackInputs, InversionAttack
from mi_losses.functional import mutual_information_bounds
from mi_losses.losses import (
    HiddenStateDistillation,
    RetrievalDistillation,
    SubBatchMutualInformation,
)
from mi_losses.noise import SequenceGaussianNoiseLayer

SequenceObjective = Literal["sub_batch", "infonce", "adversarial"]
Utility = Literal["cosine", "retrieval"]


class SequenceObfuscation(pl.LightningModule):
    """A :class:`~mi_losses.noise.SequenceGaussianNoiseLayer` trained before a frozen encoder.

    Args:
        encoder: the frozen :class:`~mi_losses.evaluation.SentenceEncoder` (or any module
            with ``word_embedding_table`` and ``sentence_embedding``).
        alpha: weight of the privacy term in ``[0, 1]``.
        objective: ``"sub_batch"``, ``"infonce"`` or ``"adversarial"``.
        utility: ``"cosine"`` or ``"retrieval"``.
        hidden_dim: width of the layer's encoder.
        num_layers: its transformer layers.
        init_std: ``sigma`` at initialisation.
        max_std: upper bound of ``sigma``.
        mean_scale: bound of ``|mu|`` per coordinate.
        learning_rate: Adam learning rate.
        candidates: vocabulary ids the adversary predicts among ``(C,)`` (``"adversarial"``
            only, required there).
        attack_steps: adversary steps per layer step.
        attack_learning_rate: the adversary's AdamW learning rate.
        max_length: longest sequence (the adversary's position embedding).
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
        *,
        candidates: torch.Tensor | None = None,
        attack_steps: int = 1,
        attack_learning_rate: float = 1e-3,
        max_length: int = 64,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if objective not in ("sub_batch", "infonce", "adversarial"):
            raise ValueError(
                f"objective must be 'sub_batch', 'infonce' or 'adversarial', got {objective!r}"
            )
        if objective == "adversarial" and candidates is None:
            raise ValueError("objective 'adversarial' needs candidates (the adversary's tokens)")
        self.save_hyperparameters(ignore=["encoder", "candidates"])
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
        self.alpha, self.objective = alpha, objective
        self.utility_loss = (
            RetrievalDistillation() if utility == "retrieval" else HiddenStateDistillation()
        )
        self.learning_rate = learning_rate
        self.attack: InversionAttack | None = None
        if objective == "adversarial":
            assert candidates is not None
            self.automatic_optimization = False
            self.attack = InversionAttack(
                candidates,
                table[candidates],
                max_length=max_length,
                learning_rate=attack_learning_rate,
                use_posterior=False,
            )
        self.attack_steps = attack_steps

    def attack_loss(self, noisy: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The adversary's cross-entropy at the noised positions whose token it knows."""
        assert self.attack is not None
        noise_mask = batch["noise_mask"].bool()
        logits = self.attack(AttackInputs(noisy, None), batch["attention_mask"].bool(), noise_mask)
        labels = self.attack.labels(batch["input_ids"])
        keep = noise_mask & (labels >= 0)
        return F.cross_entropy(logits[keep], labels[keep])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        noise_mask = batch["noise_mask"].bool()
        attention_mask = batch["attention_mask"].bool()
        table = self.encoder.word_embedding_table
        clean = table[batch["input_ids"]].detach()
        out = self.noise_layer(clean, noise_mask, attention_mask=attention_mask)
        arguments = (out.means, out.stds, noise_mask, clean, out.noisy)
        if self.objective == "adversarial":
            layer_optimizer, attack_optimizer = self.optimizers()  # type: ignore[attr-defined]
            released = torch.where(noise_mask.unsqueeze(-1), out.noisy, clean)
            for _ in range(self.attack_steps):
                attack_optimizer.zero_grad()
                self.manual_backward(self.attack_loss(released.detach(), batch))
                attack_optimizer.step()
            privacy = -self.attack_loss(released, batch)
        elif self.objective == "sub_batch":
            privacy = self.mi_loss(*arguments)
        else:
            privacy = mutual_information_bounds(*arguments, granularity="token").lower
        encoder = self.encoder
        with torch.no_grad():
            clean_sentence = encoder.sentence_embedding(clean, attention_mask)
        noisy_sentence = encoder.sentence_embedding(out.noisy, attention_mask)
        utility = self.utility_loss(noisy_sentence.unsqueeze(1), clean_sentence.unsqueeze(1))
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
        if self.objective == "adversarial":
            layer_optimizer.zero_grad()
            self.manual_backward(loss)
            layer_optimizer.step()  # the adversary's gradients from it are zeroed before its next step
        return loss

    def configure_optimizers(self) -> Any:
        layer_optimizer = torch.optim.Adam(self.noise_layer.parameters(), lr=self.learning_rate)
        if self.attack is None:
            return layer_optimizer
        return [layer_optimizer, self.attack.configure_optimizers()]
