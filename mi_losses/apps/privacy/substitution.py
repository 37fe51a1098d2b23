"""Train a learned substitution channel (:class:`~mi_losses.mechanisms.LearnedSubstitution`) and
judge it on the privacy frontier.

The channel replaces every noised token by one of its ``K`` nearest training-text tokens (the
frontier's candidates, SanText's output vocabulary), with a learned distribution started from
SanText's at ``epsilon``. It is trained on

    loss = alpha * I + (1 - alpha) * U

with ``I`` its exact known-prior MI in nats per token (smoothed training prior over the whole
vocabulary, as the frontier's exact MI) and ``U`` the retrieval utility
(:class:`~mi_losses.losses.RetrievalDistillation`) of the frozen encoder on the released
sequence, through a straight-through Gumbel-softmax draw at ``temperature``. The judge sees it as
a :class:`~mi_losses.evaluation.channels.ReleaseChannel` with its exact channel (Bayes attacker
over the released token, exact MI, the inversion attack with the Bayes posterior).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mi_losses.evaluation.channels import ReleaseChannel, StudyChannel
from mi_losses.evaluation.sequences import StudyData, training_loader
from mi_losses.losses import RetrievalDistillation
from mi_losses.mechanisms import LearnedSubstitution


@dataclass
class SubstitutionSettings:
    """How the substitution channel is built and trained (plain data, settable from YAML).

    Args:
        num_candidates: ``K``, candidates per token.
        epsilon: SanText's parameter of the initial logits.
        temperature: the Gumbel-softmax temperature of the utility's gradient.
        learning_rate: Adam learning rate of the logits.
        batch_size: training sequences per step.
    """

    num_candidates: int = 32
    epsilon: float = 12.5
    temperature: float = 0.5
    learning_rate: float = 0.05
    batch_size: int = 16


def train_substitution(
    encoder: Any,
    data: StudyData,
    alpha: float,
    steps: int,
    seed: int,
    settings: SubstitutionSettings,
) -> tuple[LearnedSubstitution, list[dict[str, float]]]:
    """The channel after ``steps`` Adam steps on ``alpha * I + (1 - alpha) * U``, and the
    per-step history of ``mi`` (nats per token) and ``utility``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    torch.manual_seed(seed)
    table = data.table.detach()
    output_table = table[data.candidates]
    layer = LearnedSubstitution.nearest(
        table, output_table, settings.num_candidates, settings.epsilon
    )
    optimizer = torch.optim.Adam(layer.parameters(), lr=settings.learning_rate)
    utility_loss = RetrievalDistillation()
    prior = data.prior
    loader = training_loader(data.train, settings.batch_size, seed)
    history: list[dict[str, float]] = []
    while len(history) < steps:
        for batch in loader:
            if len(history) == steps:
                break
            noise_mask = batch["noise_mask"].bool()
            attention_mask = batch["attention_mask"].bool()
            clean = table[batch["input_ids"]]
            released = layer(batch["input_ids"], output_table, settings.temperature)
            noisy = torch.where(noise_mask.unsqueeze(-1), released, clean)
            with torch.no_grad():
                clean_sentence = encoder.sentence_embedding(clean, attention_mask)
            noisy_sentence = encoder.sentence_embedding(noisy, attention_mask)
            utility = utility_loss(noisy_sentence.unsqueeze(1), clean_sentence.unsqueeze(1))
            mi = layer.mutual_information(prior)
            loss = alpha * mi.float() + (1.0 - alpha) * utility
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append({"mi": float(mi.detach()), "utility": float(utility.detach())})
    return layer, history


class SubstitutionChannel(ReleaseChannel):
    """A trained :class:`~mi_losses.mechanisms.LearnedSubstitution` as the judge sees it."""

    def __init__(
        self,
        layer: LearnedSubstitution,
        data: StudyData,
        settings: SubstitutionSettings,
        history: list[dict[str, float]],
        train_seconds: float,
    ) -> None:
        super().__init__(
            "substitution",
            settings.epsilon,
            data.table,
            data.prior,
            data.candidates,
            log_channel=layer.dense_log_probabilities(),
        )
        with torch.no_grad():
            self.channel_mi = float(layer.mutual_information(data.prior))
        self.facts = {
            "substitution_settings": asdict(settings),
            "substitution_steps": len(history),
            "substitution_train_seconds": train_seconds,
            "substitution_history_end": history[-1] if history else None,
            "substitution_history_start": history[0] if history else None,
            "channel_mi_nats_per_token": self.channel_mi,
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.facts}


def substitution_channel(
    encoder: Any,
    data: StudyData,
    alpha: float,
    steps: int,
    settings: SubstitutionSettings,
    seed: int,
) -> StudyChannel:
    """Train (:func:`train_substitution`) and wrap for the judge (``seed`` seeds the training)."""
    start = time.perf_counter()
    layer, history = train_substitution(encoder, data, alpha, steps, seed, settings)
    return SubstitutionChannel(layer, data, settings, history, time.perf_counter() - start)
