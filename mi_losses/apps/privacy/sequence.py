"""Train a noise layer on the library's sample-based estimators or against an adversary.

:class:`~mi_losses.noise.SequenceGaussianNoiseLayer` reads the whole clean sequence to choose
each position's mean and std, so no known-prior (vocabulary) MI applies; the privacy term is one
of the estimators that need only samples, at token granularity:

- ``"sub_batch"``: the sub-batch (L1Out) estimate, an upper bound in expectation
  (:class:`~mi_losses.losses.SubBatchMutualInformation`);
- ``"infonce"``: its InfoNCE lower bound from the same pass
  (:func:`~mi_losses.functional.mutual_information_bounds`), capped at ``log(components + 1)``;
- ``"adversarial"``: not an estimator but an adversary: an
  :class:`~mi_losses.attacks.inversion.InversionAttack` (without a posterior) kept strong by
  :class:`~mi_losses.losses.AdversarialPrivacy` (``adversary``: pre-training on the starting
  layer, several attack steps per layer step, a pool of past adversaries, fresh restarts) and
  its privacy term ``I`` (negative cross-entropy, or a bounded one: the posterior's entropy, its
  KL from the token prior, a hinge at a target accuracy).

The layer is ``layer="sequence"`` (the sequence-dependent layer) or ``layer="token"`` (the
context-free :class:`~mi_losses.noise.LearnedTokenNoise`, with a per-token std offset).
``loss = alpha * I + (1 - alpha) * U`` with the main job's utility term ``U`` on the sentence
embeddings (:class:`~mi_losses.losses.RetrievalDistillation` or ``1 - cos``,
:class:`~mi_losses.losses.HiddenStateDistillation`). Only the noise layer is trained by it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from functools import partial
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import nn

from mi_losses.attacks.inversion import AttackInputs, InversionAttack
from mi_losses.functional import mutual_information_bounds
from mi_losses.losses import (
    AdversarialPrivacy,
    AdversaryBatch,
    AdversarySettings,
    HiddenStateDistillation,
    RetrievalDistillation,
    SubBatchMutualInformation,
    kmeans_prototypes,
    prototype_pull_loss,
)
from mi_losses.noise import LearnedTokenNoise, SequenceGaussianNoiseLayer
from mi_losses.noise.output import NoisyEmbeddings

SequenceObjective = Literal["sub_batch", "infonce", "adversarial"]
Utility = Literal["cosine", "retrieval"]
LayerKind = Literal["sequence", "token"]


class ReleaseAttack(nn.Module):
    """An :class:`~mi_losses.attacks.inversion.InversionAttack` called as
    :class:`~mi_losses.losses.AdversarialPrivacy` calls its attack:
    ``(released, attention_mask, noise_mask)`` to logits ``(B, S, C)``.

    With ``nearest=True`` the attack starts as nearest neighbour: its posterior input is
    ``log_softmax(-scale * ||y - w_c||^2)`` over the candidates' rows ``w_c``, with a learned
    ``scale`` (started at ``init_scale``), added to its logits (as the one-token Bayes posterior
    for a context-free layer); without, it reads the release alone.
    """

    def __init__(
        self, attack: InversionAttack, *, nearest: bool = False, init_scale: float = 10.0
    ) -> None:
        super().__init__()
        self.attack = attack
        self.nearest = nearest
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)), requires_grad=nearest)

    def forward(
        self, released: torch.Tensor, attention_mask: torch.Tensor, noise_mask: torch.Tensor
    ) -> torch.Tensor:
        log_posterior = None
        if self.nearest:
            rows: torch.Tensor = self.attack.candidate_table  # type: ignore[assignment]  # a buffer
            squared = torch.cdist(released.float(), rows.unsqueeze(0)).pow(2)
            log_posterior = torch.log_softmax(-self.log_scale.exp() * squared, dim=-1)
        inputs = AttackInputs(released, log_posterior)
        logits: torch.Tensor = self.attack(inputs, attention_mask, noise_mask)
        return logits


def _release_attack(
    candidates: torch.Tensor, table: torch.Tensor, max_length: int, nearest: bool
) -> ReleaseAttack:
    attack = InversionAttack(
        candidates, table[candidates], max_length=max_length, use_posterior=nearest
    )
    return ReleaseAttack(attack, nearest=nearest)


class SequenceObfuscation(pl.LightningModule):
    """A noise layer trained before a frozen encoder.

    Args:
        encoder: the frozen :class:`~mi_losses.evaluation.SentenceEncoder` (or any module
            with ``word_embedding_table`` and ``sentence_embedding``).
        alpha: weight of the privacy term in ``[0, 1]``.
        objective: ``"sub_batch"``, ``"infonce"`` or ``"adversarial"``.
        utility: ``"cosine"`` or ``"retrieval"``.
        hidden_dim: width of the layer's encoder (or of the token layer's MLP).
        num_layers: its transformer layers (sequence layer only).
        init_std: ``sigma`` at initialisation.
        max_std: upper bound of ``sigma``.
        mean_scale: bound of ``|mu|`` per coordinate.
        learning_rate: Adam learning rate.
        candidates: vocabulary ids the adversary predicts among ``(C,)`` (``"adversarial"``
            only, required there).
        prior: the token prior over the vocabulary ``(V,)`` (the adversary's ``"prior_kl"``
            only, required there; restricted to the candidates and renormalised).
        adversary: :class:`~mi_losses.losses.AdversarySettings` (``"adversarial"`` only;
            defaults if ``None``: one attack step per layer step, negative cross-entropy).
        max_length: longest sequence (the adversary's position embedding).
        layer: ``"sequence"`` (:class:`~mi_losses.noise.SequenceGaussianNoiseLayer`) or
            ``"token"`` (:class:`~mi_losses.noise.LearnedTokenNoise`, context-free).
        prototype_weight: ``> 0`` adds ``prototype_weight *``
            :func:`~mi_losses.losses.prototype_pull_loss` of the released means ``x + mu`` to
            the loss (a mean that maps many tokens to one); needs ``candidates`` and ``prior``.
        num_prototypes: ``K``, prototypes from :func:`~mi_losses.losses.kmeans_prototypes` of
            the candidates' embeddings weighted by the prior.
        nearest_attack: the adversary starts as nearest neighbour (:class:`ReleaseAttack`).
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
        prior: torch.Tensor | None = None,
        adversary: AdversarySettings | None = None,
        max_length: int = 64,
        layer: LayerKind = "sequence",
        prototype_weight: float = 0.0,
        num_prototypes: int = 64,
        nearest_attack: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if objective not in ("sub_batch", "infonce", "adversarial"):
            raise ValueError(
                f"objective must be 'sub_batch', 'infonce' or 'adversarial', got {objective!r}"
            )
        if layer not in ("sequence", "token"):
            raise ValueError(f"layer must be 'sequence' or 'token', got {layer!r}")
        if objective == "adversarial" and candidates is None:
            raise ValueError("objective 'adversarial' needs candidates (the adversary's tokens)")
        if adversary is not None and objective != "adversarial":
            raise ValueError(f"adversary settings need objective 'adversarial', got {objective!r}")
        self.save_hyperparameters(ignore=["encoder", "candidates", "prior", "adversary"])
        self.encoder: Any = encoder
        table = encoder.word_embedding_table
        self.layer_kind = layer
        self.noise_layer: nn.Module
        if layer == "sequence":
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
        else:
            self.noise_layer = LearnedTokenNoise(
                int(table.shape[1]),
                hidden_dim=hidden_dim,
                init_std=init_std,
                max_std=max_std,
                mean_scale=mean_scale,
                vocab_size=int(table.shape[0]),
            )
        self.mi_loss = SubBatchMutualInformation(granularity="token")
        self.alpha, self.objective = alpha, objective
        self.utility_loss = (
            RetrievalDistillation() if utility == "retrieval" else HiddenStateDistillation()
        )
        self.learning_rate = learning_rate
        self.adversary: AdversarialPrivacy | None = None
        if objective == "adversarial":
            assert candidates is not None
            settings = adversary or AdversarySettings()
            log_prior = None
            if settings.objective == "prior_kl":
                if prior is None or prior.shape != table.shape[:1]:
                    got = None if prior is None else tuple(prior.shape)
                    raise ValueError(
                        f"adversary objective 'prior_kl' needs prior ({table.shape[0]},), got {got}"
                    )
                log_prior = prior[candidates].double().log()
            self.adversary = AdversarialPrivacy(
                partial(_release_attack, candidates, table, max_length, nearest_attack),
                settings,
                log_prior=log_prior,
            )
            lookup = torch.full((int(table.shape[0]),), -1, dtype=torch.long)
            lookup[candidates] = torch.arange(candidates.shape[0])
            self.register_buffer("label_lookup", lookup)
        if prototype_weight < 0.0:
            raise ValueError(f"prototype_weight must be >= 0, got {prototype_weight}")
        self.prototype_weight = prototype_weight
        prototypes = None
        if prototype_weight > 0.0:
            if candidates is None or prior is None:
                raise ValueError("prototype_weight > 0 needs candidates and prior")
            points = table[candidates].detach().float()
            prototypes = kmeans_prototypes(points, prior[candidates].float(), num_prototypes)
        self.prototypes: torch.Tensor | None
        self.register_buffer("prototypes", prototypes)
        self.pretrain_losses: list[float] = []
        self.history: list[dict[str, float]] = []
        """What ``training_step`` logged at every step (floats, without the ``train/`` prefix)."""

    def release(self, batch: dict[str, torch.Tensor]) -> tuple[NoisyEmbeddings, torch.Tensor]:
        """The layer's output on ``batch`` and the clean embeddings ``(B, S, E)``."""
        noise_mask = batch["noise_mask"].bool()
        table = self.encoder.word_embedding_table
        clean = table[batch["input_ids"]].detach()
        if self.layer_kind == "token":
            return self.noise_layer(batch["input_ids"], table.detach(), noise_mask), clean
        out = self.noise_layer(clean, noise_mask, attention_mask=batch["attention_mask"].bool())
        return out, clean

    def adversary_batch(
        self, batch: dict[str, torch.Tensor], out: NoisyEmbeddings, clean: torch.Tensor
    ) -> AdversaryBatch:
        """What the adversary sees: the release (clean where nothing is noised) and the labels."""
        noise_mask = batch["noise_mask"].bool()
        released = torch.where(noise_mask.unsqueeze(-1), out.noisy, clean)
        lookup: torch.Tensor = self.label_lookup  # type: ignore[assignment]  # a buffer
        return AdversaryBatch(
            released, lookup[batch["input_ids"]], batch["attention_mask"].bool(), noise_mask
        )

    def _draws(self) -> Iterator[AdversaryBatch]:
        """Fresh releases of the current layer on the training batches, cycled."""
        loader = self.trainer.train_dataloader
        if loader is None:
            raise RuntimeError("SequenceObfuscation: the adversary pre-trains inside trainer.fit")
        for batch in itertools.cycle(loader):
            with torch.no_grad():  # closed before the yield: grad mode is global state
                out, clean = self.release(batch)
                drawn = self.adversary_batch(batch, out, clean)
            yield drawn

    def on_train_start(self) -> None:
        if self.adversary is None:
            return
        draws = self._draws()
        self.adversary.attach(lambda: next(draws))
        self.pretrain_losses = self.adversary.pretrain()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        noise_mask = batch["noise_mask"].bool()
        attention_mask = batch["attention_mask"].bool()
        out, clean = self.release(batch)
        arguments = (out.means, out.stds, noise_mask, clean, out.noisy)
        if self.adversary is not None:
            attacked = self.adversary_batch(batch, out, clean)
            self.adversary.update(attacked.detach())
            privacy = self.adversary(attacked)
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
        if self.prototypes is not None:
            pull = prototype_pull_loss((clean + out.means)[noise_mask], self.prototypes)
            loss = loss + self.prototype_weight * pull
        logged = {
            "train/privacy": privacy.detach(),
            "train/utility_loss": utility.detach(),
            "train/std_mean": out.stds.detach()[noise_mask].mean(),
        }
        if self.prototypes is not None:
            logged["train/prototype_pull"] = pull.detach()
        if self.adversary is not None:
            logged["train/strongest_adversary"] = torch.tensor(float(self.adversary.last_strongest))
            strongest_loss = self.adversary.last_attack_losses[self.adversary.last_strongest :]
            logged["train/strongest_attack_loss"] = torch.tensor(strongest_loss[:1] or [math.nan])[
                0
            ]
        self.log_dict(logged, on_step=True, batch_size=int(noise_mask.shape[0]))
        self.history.append({key.removeprefix("train/"): float(v) for key, v in logged.items()})
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.noise_layer.parameters(), lr=self.learning_rate)
