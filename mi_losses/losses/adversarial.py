r"""Adversarial privacy: a learned attacker the noise layer is trained against, kept strong.

An adversary trained alongside the layer from scratch, one step per layer step, stays weak: the
layer learns to fool it with changes that an attacker trained afresh undoes (Elazar & Goldberg
2018; [the adversary page](adversary.md)). :class:`AdversarialPrivacy` keeps its adversary
strong, each as an option of :class:`AdversarySettings`:

- pre-training on the starting layer's release before the layer trains (a step budget, or until
  the training loss stops falling);
- ``attack_steps`` attack steps per layer step;
- a pool of past adversaries (snapshots): the layer is trained against the one with the lowest
  cross-entropy on the current batch;
- a fresh adversary every ``restart_every`` layer steps, pre-trained briefly.

The layer's privacy term is one of :func:`adversarial_privacy_loss`'s objectives: the negative
cross-entropy (unbounded: it rewards a confidently wrong relabelling) or a bounded one, the
entropy of the attack's posterior, its KL divergence from the token prior, or a hinge at a target
attack accuracy.

The attack is any module ``attack(released (B, S, E), attention_mask (B, S), noise_mask (B, S))``
returning logits ``(B, S, C)`` over ``C`` candidate tokens; it reads released embeddings only, so
one adversary serves every noise layer (sequence-dependent or context-free).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from mi_losses._validation import check_choice, check_ndim, compute_dtype

__all__ = [
    "AdversarialPrivacy",
    "AdversaryBatch",
    "AdversaryObjective",
    "AdversarySettings",
    "adversarial_privacy_loss",
]

AdversaryObjective = Literal[
    "negative_cross_entropy", "posterior_entropy", "prior_kl", "accuracy_hinge"
]
"""The layer's privacy terms (see :func:`adversarial_privacy_loss`)."""


def adversarial_privacy_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    objective: AdversaryObjective = "negative_cross_entropy",
    *,
    log_prior: torch.Tensor | None = None,
    target_accuracy: float = 0.0,
) -> torch.Tensor:
    r"""The privacy term a noise layer minimises, from an attack's logits at the attacked tokens.

    With the attack's posterior $q_n = \mathrm{softmax}(\ell_n)$ over $C$ candidates at each of
    the $N$ attacked positions, true candidate $y_n$, in nats:

    - ``"negative_cross_entropy"``: $\frac1N \sum_n \log q_n(y_n)$ (unbounded below);
    - ``"posterior_entropy"``: $\frac1N \sum_n (\log C - H(q_n))$, in $[0, \log C]$, zero for a
      uniform posterior (minimising it maximises the entropy);
    - ``"prior_kl"``: $\frac1N \sum_n \mathrm{KL}(q_n \,\|\, \pi)$ with the token prior $\pi$
      (``log_prior``, normalised here), zero when the attack learns nothing beyond the prior;
    - ``"accuracy_hinge"``: $\max(0, \frac1N \sum_n q_n(y_n) - a)$ at the target accuracy $a$:
      the expected accuracy of a guess drawn from the posterior, penalised only above $a$.

    The entropy and KL terms do not read ``labels``.

    Args:
        logits: the attack's logits ``(N, C)``.
        labels: the true candidate of each position ``(N,)``, int64 in ``[0, C)``.
        objective: one of :data:`AdversaryObjective`.
        log_prior: log-probabilities (or unnormalised log-weights) of the candidates ``(C,)``;
            ``"prior_kl"`` only, required there.
        target_accuracy: $a$ in ``[0, 1]`` (``"accuracy_hinge"`` only).

    Returns:
        A scalar; ``0`` (with a gradient) when ``N = 0``.

    Example:
        >>> logits = torch.zeros(3, 4)
        >>> adversarial_privacy_loss(logits, torch.tensor([0, 1, 2]), "posterior_entropy")
        tensor(0.)
    """
    check_choice("", "objective", objective, get_args(AdversaryObjective))
    check_ndim("logits", logits, 2, "(N, C)")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) like logits' first dimension, "
            f"got {tuple(labels.shape)}"
        )
    if not 0.0 <= target_accuracy <= 1.0:
        raise ValueError(f"target_accuracy must lie in [0, 1], got {target_accuracy}")
    if objective == "prior_kl" and (log_prior is None or log_prior.shape != logits.shape[1:]):
        got = None if log_prior is None else tuple(log_prior.shape)
        raise ValueError(
            f"objective 'prior_kl' needs log_prior of shape ({logits.shape[1]},), got {got}"
        )
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    dtype = compute_dtype(logits.dtype)
    log_q = F.log_softmax(logits.to(dtype), dim=-1)
    if objective == "negative_cross_entropy":
        return -F.nll_loss(log_q, labels)
    if objective == "accuracy_hinge":
        accuracy = log_q.gather(-1, labels.unsqueeze(-1)).exp().mean()
        return F.relu(accuracy - target_accuracy)
    q = log_q.exp()
    if objective == "posterior_entropy":
        return math.log(logits.shape[1]) + (q * log_q).sum(-1).mean()
    assert log_prior is not None
    log_pi = F.log_softmax(log_prior.to(dtype), dim=-1)
    return (q * (log_q - log_pi)).sum(-1).mean()


class AdversaryBatch(NamedTuple):
    """What the adversary sees of one batch.

    Attributes:
        released: the released embeddings ``(B, S, E)``.
        labels: candidate index of every token ``(B, S)``; ``-1`` for a token the attack cannot
            name (outside its candidates), never attacked.
        attention_mask: ``(B, S)`` bool.
        noise_mask: ``(B, S)`` bool; the attacked positions are ``noise_mask & (labels >= 0)``.

    Example:
        >>> mask = torch.ones(1, 3, dtype=torch.bool)
        >>> batch = AdversaryBatch(torch.randn(1, 3, 4), torch.tensor([[0, -1, 2]]), mask, mask)
        >>> int((batch.noise_mask & (batch.labels >= 0)).sum())
        2
    """

    released: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    noise_mask: torch.Tensor

    def detach(self) -> AdversaryBatch:
        """The same batch with ``released`` detached (what the adversary trains on)."""
        return self._replace(released=self.released.detach())


def _check_int(option: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"AdversarySettings: {option} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class AdversarySettings:
    """How the adversary is trained and what the layer minimises (plain data, settable from YAML).

    The defaults are the plain co-trained adversary: no pre-training, one attack step per layer
    step, no pool, no restart, the negative cross-entropy.

    Args:
        objective: the layer's privacy term (:func:`adversarial_privacy_loss`).
        target_accuracy: the hinge's target accuracy in ``[0, 1]`` (``"accuracy_hinge"``).
        attack_steps: attack steps per layer step, ``>= 1``, on the batch's detached release.
        learning_rate: the attack's AdamW learning rate.
        pretrain_steps: attack steps on the starting layer before the layer trains (``0``: none).
        pretrain_window: ``> 0``: pre-training stops early when the mean loss of the latest
            ``pretrain_window`` steps is not below the previous window's by ``pretrain_min_delta``
            (converged); ``0``: the whole budget.
        pretrain_min_delta: the fall of the window mean that counts (nats).
        pool_size: past adversaries kept (``0``: train against the current one only).
        snapshot_every: a snapshot of the current adversary joins the pool every this many
            layer steps (``0``: only at restarts).
        restart_every: a fresh adversary replaces the current one every this many layer steps
            (the old one joins the pool); ``0``: never.
        restart_steps: steps of the fresh adversary's pre-training.
        layer_temperature: the layer's term reads the attack's logits divided by this (``> 0``):
            above 1 it softens a confident attack, whose posterior would otherwise give the
            bounded terms no gradient (the adversary itself trains at temperature 1).

    Example:
        >>> AdversarySettings(objective="accuracy_hinge", target_accuracy=0.4, attack_steps=3)
        ... # doctest: +ELLIPSIS
        AdversarySettings(objective='accuracy_hinge', target_accuracy=0.4, attack_steps=3, ...)
        >>> AdversarySettings(attack_steps=0)
        Traceback (most recent call last):
        ...
        ValueError: AdversarySettings: attack_steps must be an int >= 1, got 0
    """

    objective: AdversaryObjective = "negative_cross_entropy"
    target_accuracy: float = 0.5
    attack_steps: int = 1
    learning_rate: float = 1e-3
    pretrain_steps: int = 0
    pretrain_window: int = 0
    pretrain_min_delta: float = 0.01
    pool_size: int = 0
    snapshot_every: int = 0
    restart_every: int = 0
    restart_steps: int = 0
    layer_temperature: float = 1.0

    def __post_init__(self) -> None:
        check_choice("AdversarySettings", "objective", self.objective, get_args(AdversaryObjective))
        if not 0.0 <= self.target_accuracy <= 1.0:
            raise ValueError(
                f"AdversarySettings: target_accuracy must lie in [0, 1], got {self.target_accuracy}"
            )
        if not self.learning_rate > 0.0:
            raise ValueError(
                f"AdversarySettings: learning_rate must be > 0, got {self.learning_rate}"
            )
        if not self.layer_temperature > 0.0:
            raise ValueError(
                f"AdversarySettings: layer_temperature must be > 0, got {self.layer_temperature}"
            )
        if not self.pretrain_min_delta >= 0.0:
            raise ValueError(
                f"AdversarySettings: pretrain_min_delta must be >= 0, got {self.pretrain_min_delta}"
            )
        _check_int("attack_steps", self.attack_steps, 1)
        for option in (
            "pretrain_steps",
            "pretrain_window",
            "pool_size",
            "snapshot_every",
            "restart_every",
            "restart_steps",
        ):
            _check_int(option, getattr(self, option), 0)


def _frozen_copy(attack: nn.Module) -> nn.Module:
    snapshot = copy.deepcopy(attack).eval()
    snapshot.requires_grad_(False)
    return snapshot


class AdversarialPrivacy(nn.Module):
    """An adversary kept strong, and the privacy term of the layer it attacks.

    Per layer step, :meth:`update` trains the adversary on the batch's detached release (and
    restarts or snapshots it on schedule); :meth:`forward` returns the privacy term
    (:func:`adversarial_privacy_loss`) of the strongest adversary on the batch, differentiable
    in ``released`` only (the attacks' weights are read as constants). :meth:`pretrain` trains
    the current adversary on fresh batches from the attached draw (:meth:`attach`).

    Args:
        make_attack: builds a fresh attack (see the module docstring); called at construction
            and at each restart.
        settings: :class:`AdversarySettings` (defaults if ``None``).
        log_prior: log-prior of the candidates ``(C,)`` (``"prior_kl"`` only, required there).

    Attributes:
        attack: the current adversary.
        pool: the past adversaries (frozen, in eval mode), oldest first.
        steps: layer steps seen by :meth:`update`.
        restarts: the layer steps at which a fresh adversary started.
        last_strongest: index of the adversary :meth:`forward` used last (``0``: the current
            one, ``i``: ``pool[i - 1]``), and ``last_attack_losses`` their cross-entropies.

    Example:
        >>> class Linear(nn.Module):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.head = nn.Linear(4, 3)
        ...     def forward(self, released, attention_mask, noise_mask):
        ...         return self.head(released)
        >>> adversary = AdversarialPrivacy(Linear, AdversarySettings(objective="posterior_entropy"))
        >>> batch = AdversaryBatch(
        ...     torch.randn(2, 5, 4), torch.randint(0, 3, (2, 5)),
        ...     torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool),
        ... )
        >>> adversary.update(batch)
        >>> adversary(batch).shape
        torch.Size([])
    """

    def __init__(
        self,
        make_attack: Callable[[], nn.Module],
        settings: AdversarySettings | None = None,
        *,
        log_prior: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings or AdversarySettings()
        if self.settings.objective == "prior_kl" and (log_prior is None or log_prior.ndim != 1):
            got = None if log_prior is None else tuple(log_prior.shape)
            raise ValueError(
                f"AdversarialPrivacy: objective 'prior_kl' needs log_prior (C,), got {got}"
            )
        self.log_prior: torch.Tensor | None
        self.register_buffer("log_prior", None if log_prior is None else log_prior.float().clone())
        self.make_attack = make_attack
        self.attack = make_attack()
        self.optimizer = self._optimizer()
        self.pool = nn.ModuleList()
        self.steps = 0
        self.restarts: list[int] = []
        self.last_strongest = 0
        self.last_attack_losses: list[float] = []
        self.draw: Callable[[], AdversaryBatch] | None = None

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.attack.parameters(), lr=self.settings.learning_rate)

    def attach(self, draw: Callable[[], AdversaryBatch]) -> AdversarialPrivacy:
        """``draw()`` gives a fresh batch of the layer's current release (for pre-training)."""
        self.draw = draw
        return self

    @staticmethod
    def _attacked(
        attack: nn.Module, batch: AdversaryBatch, *, constant: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, C)`` and labels ``(N,)`` at the attacked positions; with ``constant``
        the attack's weights take no gradient."""
        noise_mask = batch.noise_mask.bool()
        arguments = (batch.released, batch.attention_mask.bool(), noise_mask)
        if constant:
            state = {name: value.detach() for name, value in attack.state_dict().items()}
            logits = functional_call(attack, state, arguments)
        else:
            logits = attack(*arguments)
        keep = noise_mask & (batch.labels >= 0)
        return logits[keep], batch.labels[keep]

    def attack_step(self, batch: AdversaryBatch) -> float:
        """One optimizer step of the current adversary on ``batch`` (detached); its loss."""
        self.attack.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():  # also where the caller's hook runs without gradients
            logits, labels = self._attacked(self.attack, batch.detach())
            if labels.numel() == 0:
                return 0.0
            loss = F.cross_entropy(logits, labels)
            loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return float(loss.detach())

    def pretrain(self, steps: int | None = None) -> list[float]:
        """Train the current adversary on ``steps`` fresh draws (``settings.pretrain_steps`` if
        ``None``), stopping early on the plateau rule of :class:`AdversarySettings`; the losses."""
        steps = self.settings.pretrain_steps if steps is None else steps
        if steps and self.draw is None:
            raise RuntimeError("AdversarialPrivacy: attach(draw) before pre-training")
        window, losses = self.settings.pretrain_window, []
        for _ in range(steps):
            assert self.draw is not None
            losses.append(self.attack_step(self.draw()))
            if window and len(losses) >= 2 * window and len(losses) % window == 0:
                latest = sum(losses[-window:]) / window
                previous = sum(losses[-2 * window : -window]) / window
                if previous - latest < self.settings.pretrain_min_delta:
                    break
        return losses

    def snapshot(self) -> None:
        """Add a frozen copy of the current adversary to the pool (the oldest leaves when full)."""
        if self.settings.pool_size == 0:
            return
        self.pool.append(_frozen_copy(self.attack))
        if len(self.pool) > self.settings.pool_size:
            del self.pool[0]

    def restart(self) -> list[float]:
        """Snapshot the current adversary, start a fresh one and pre-train it
        (``settings.restart_steps``); the pre-training losses."""
        self.snapshot()
        device = next(iter(self.attack.parameters())).device
        self.attack = self.make_attack().to(device)
        self.optimizer = self._optimizer()
        self.restarts.append(self.steps)
        return self.pretrain(self.settings.restart_steps)

    def update(self, batch: AdversaryBatch) -> None:
        """The adversary's share of one layer step: a restart or a snapshot when due, then
        ``attack_steps`` steps on ``batch``."""
        settings = self.settings
        if settings.restart_every and self.steps and self.steps % settings.restart_every == 0:
            self.restart()
        elif settings.snapshot_every and self.steps and self.steps % settings.snapshot_every == 0:
            self.snapshot()
        for _ in range(settings.attack_steps):
            self.attack_step(batch)
        self.steps += 1

    def strongest(self, batch: AdversaryBatch) -> int:
        """Index of the adversary with the lowest cross-entropy on ``batch`` (``0``: current)."""
        self.attack.eval()
        losses = []
        with torch.no_grad():
            for attack in (self.attack, *self.pool):
                logits, labels = self._attacked(attack, batch.detach())
                losses.append(float(F.cross_entropy(logits, labels)) if len(labels) else 0.0)
        self.last_attack_losses = losses
        return min(range(len(losses)), key=losses.__getitem__)

    def forward(self, batch: AdversaryBatch) -> torch.Tensor:
        """The privacy term of the strongest adversary on ``batch`` (a scalar, in nats)."""
        index = self.strongest(batch)
        self.last_strongest = index
        attack = self.attack if index == 0 else self.pool[index - 1]
        attack.eval()
        logits, labels = self._attacked(attack, batch, constant=True)
        return adversarial_privacy_loss(
            logits / self.settings.layer_temperature,
            labels,
            self.settings.objective,
            log_prior=self.log_prior,
            target_accuracy=self.settings.target_accuracy,
        )
