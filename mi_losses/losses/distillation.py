"""Utility losses: how far the frozen model's outputs on the noisy input are from the clean ones.

Each module takes the model's outputs on the noisy input (the "student", gradients flow into it
and through the frozen model into the noise layer), the same outputs on the clean input (the
"teacher", usually computed under ``torch.no_grad``) and the ``(B, S)`` attention mask, and
returns a scalar. Like the estimators they keep ``component_losses`` and ``last_num_queries``
after each call, so :class:`mi_losses.callbacks.ComponentLossLogger` logs them per step. The
attribute ``reads`` names what a task feeds them: ``"logits"`` ``(B, S, V)`` or
``"hidden_states"`` ``(B, S, H)``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch.nn import functional as F

from mi_losses.losses.base import ComponentLossModule

DISTILLATION = "distillation_loss"
"""Key of the distillation value in ``component_losses``."""

ModelOutput = Literal["logits", "hidden_states"]


def _check(owner: str, noisy: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor | None) -> None:
    if noisy.ndim != 3 or noisy.shape != clean.shape:
        raise ValueError(
            f"{owner}: the noisy and clean outputs must have one shape (B, S, D), got "
            f"{tuple(noisy.shape)} and {tuple(clean.shape)}"
        )
    if mask is not None and mask.shape != noisy.shape[:2]:
        raise ValueError(
            f"{owner}: attention_mask must have shape {tuple(noisy.shape[:2])} (B, S), got "
            f"{tuple(mask.shape)}"
        )


def _positive(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{owner}: {name} must be a positive number, got {value!r}")
    return float(value)


def _weights(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``(B, S, 1)`` weights: the attention mask, or all ones."""
    if mask is None:
        return like.new_ones(like.shape[:2]).unsqueeze(-1)
    return mask.to(like.dtype).unsqueeze(-1)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``hidden`` ``(B, S, H)`` over the attended positions, ``(B, H)`` (sentence-transformers)."""
    weights = _weights(attention_mask, hidden)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class _Distillation(ComponentLossModule):
    reads: ClassVar[ModelOutput] = "hidden_states"

    def _finish(self, value: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
        self.component_losses = {DISTILLATION: value.detach()}
        self.last_num_queries = torch.as_tensor(count, dtype=torch.int64).detach()
        return value


class LogitDistillation(_Distillation):
    """Knowledge distillation of a language model's next-token distribution.

    $$\\mathcal{L} = \\frac{T^2}{|A|} \\sum_{(b,s) \\in A}
    \\mathrm{KL}\\big(\\mathrm{softmax}(z^{clean}_{bs}/T) \\,\\|\\, \\mathrm{softmax}(z^{noisy}_{bs}/T)\\big)$$

    over the attended positions $A$ (nats; $T^2$ keeps the gradient scale independent of $T$).

    Args:
        temperature: $T > 0$.

    Example:
        >>> loss = LogitDistillation(temperature=2.0)
        >>> logits = torch.randn(2, 3, 5)
        >>> float(loss(logits, logits, torch.ones(2, 3, dtype=torch.bool)))
        0.0
    """

    reads: ClassVar[ModelOutput] = "logits"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = _positive(type(self).__name__, "temperature", temperature)

    def forward(
        self,
        noisy_logits: torch.Tensor,
        clean_logits: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean KL over the attended positions of ``(B, S, V)`` logits; a scalar."""
        _check(type(self).__name__, noisy_logits, clean_logits, attention_mask)
        t = self.temperature
        student = F.log_softmax(noisy_logits.float() / t, dim=-1)
        teacher = F.log_softmax(clean_logits.float() / t, dim=-1)
        per_position = (teacher.exp() * (teacher - student)).sum(-1)
        weights = _weights(attention_mask, per_position.unsqueeze(-1)).squeeze(-1)
        count = weights.sum()
        value = (per_position * weights).sum() / count.clamp_min(1.0) * t * t
        return self._finish(value, count.long())


class HiddenStateDistillation(_Distillation):
    """Distance between hidden states (an encoder's outputs) on the noisy and the clean input.

    ``pooling="mean"``: mean-pool each sequence over the attention mask (the sentence embedding of
    sentence-transformers), then average over the batch $1 - \\cos(\\bar h^{noisy}_b,
    \\bar h^{clean}_b)$ (``metric="cosine"``, in $[0, 2]$) or the mean squared error per feature
    (``metric="mse"``). ``pooling="token"``: the same per attended position.

    Args:
        metric: ``"cosine"`` or ``"mse"``.
        pooling: ``"mean"`` (per sequence) or ``"token"`` (per attended position).

    Example:
        >>> loss = HiddenStateDistillation()
        >>> hidden = torch.randn(2, 3, 4)
        >>> round(float(loss(hidden, hidden, torch.ones(2, 3, dtype=torch.bool))), 6)
        0.0
    """

    def __init__(
        self,
        metric: Literal["cosine", "mse"] = "cosine",
        pooling: Literal["mean", "token"] = "mean",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if metric not in ("cosine", "mse"):
            raise ValueError(f"{owner}: metric must be 'cosine' or 'mse', got {metric!r}")
        if pooling not in ("mean", "token"):
            raise ValueError(f"{owner}: pooling must be 'mean' or 'token', got {pooling!r}")
        self.metric = metric
        self.pooling = pooling

    def _distance(self, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        if self.metric == "cosine":
            return 1.0 - F.cosine_similarity(noisy, clean, dim=-1)
        return (noisy - clean).square().mean(-1)

    def forward(
        self,
        noisy_hidden: torch.Tensor,
        clean_hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The distance of ``(B, S, H)`` hidden states, masked by ``attention_mask`` ``(B, S)``."""
        _check(type(self).__name__, noisy_hidden, clean_hidden, attention_mask)
        if self.pooling == "mean":
            noisy = mean_pool(noisy_hidden, attention_mask)
            clean = mean_pool(clean_hidden, attention_mask)
            return self._finish(self._distance(noisy, clean).mean(), noisy.shape[0])
        per_position = self._distance(noisy_hidden, clean_hidden)
        weights = _weights(attention_mask, per_position.unsqueeze(-1)).squeeze(-1)
        count = weights.sum()
        value = (per_position * weights).sum() / count.clamp_min(1.0)
        return self._finish(value, count.long())


class RetrievalDistillation(_Distillation):
    """Find each clean sentence among the batch's from its noisy one: a contrastive utility.

    With $u_b, v_b$ the L2-normalised mean-pooled hidden states on the noisy and clean input,
    the cross-entropy of the logits $u_b \\cdot v_c / \\tau$ against $c = b$ (the training form
    of retrieval@1, $\\ge 0$; the MiniLM case study's ``retrieval`` utility).

    Args:
        temperature: $\\tau > 0$.

    Example:
        >>> loss = RetrievalDistillation()
        >>> hidden = torch.eye(4).unsqueeze(1)
        >>> float(loss(hidden, hidden, torch.ones(4, 1, dtype=torch.bool))) < 1e-6
        True
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = _positive(type(self).__name__, "temperature", temperature)

    def forward(
        self,
        noisy_hidden: torch.Tensor,
        clean_hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The retrieval cross-entropy of ``(B, S, H)`` hidden states; a scalar."""
        _check(type(self).__name__, noisy_hidden, clean_hidden, attention_mask)
        noisy = mean_pool(noisy_hidden, attention_mask)
        clean = mean_pool(clean_hidden, attention_mask)
        logits = F.normalize(noisy, dim=-1) @ F.normalize(clean, dim=-1).T
        target = torch.arange(logits.shape[0], device=logits.device)
        value = F.cross_entropy(logits / self.temperature, target)
        return self._finish(value, noisy.shape[0])
