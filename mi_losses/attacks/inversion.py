"""A learned inversion attack: a small transformer that reads the whole noisy sequence.

The attacker of docs/math.md ("Attackers and baselines on one frontier") that reads context: it
sees what the noise layer releases for every position of a sequence, ``(B, S, E)``, and predicts
the clean token of every noised position among ``C`` candidate tokens. Trained on the training
split against a *frozen* layer (a :data:`Channel`, called with fresh noise at every step),
validated on fixed inputs (one seeded noise draw shared with the other attackers).

Where the layer is context-free the channel may also give the one-token Bayes log posterior
over the candidates ``(B, S, C)``; it is added to the model's logits (whose head starts at zero),
so the attack starts as the Bayes attacker and training can only add what context tells. The
embedding of the posterior's best guess and its log-probability are input features too.

Failure rates count every noised position: a token outside the candidates is always a miss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Literal, NamedTuple

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "AttackInputs",
    "Channel",
    "InversionAttack",
    "inversion_guesses",
    "train_inversion_attack",
    "warmup_cosine",
]


class AttackInputs(NamedTuple):
    """What the attacker sees of one batch.

    Attributes:
        embeddings: the released embeddings ``(B, S, E)`` (clean where nothing is noised).
        log_posterior: the one-token log posterior over the candidates ``(B, S, C)``, or
            ``None`` where the layer has none (sequence-dependent layers).
    """

    embeddings: torch.Tensor
    log_posterior: torch.Tensor | None


Channel = Callable[[torch.Tensor, torch.Tensor], AttackInputs]
"""A frozen noise layer as the attacker queries it: ``(input_ids (B, S), noise_mask (B, S))`` to
:class:`AttackInputs`, with fresh noise at every call."""


class InversionAttack(pl.LightningModule):
    """Predict the clean token at every noised position from the whole released sequence.

    Per position the input features are ``LayerNorm(y)``, ``log |y|``, a noised flag and, with a
    posterior, the embedding of its most probable candidate and that probability's logarithm; a
    learned position embedding
    is added and ``num_layers`` pre-norm transformer layers (``num_heads`` heads, width
    ``d_model``) mix the sequence under the attention mask. The head maps to the ``C`` candidates
    and is zero-initialised; the Bayes log posterior, where given, is added to its logits.
    Training minimises the cross-entropy at the noised positions whose token is a candidate.

    Training batches are dicts of ``input_ids``, ``attention_mask`` and ``noise_mask`` ``(B, S)``;
    the attached :data:`Channel` (:meth:`attach`) draws what the attacker sees. Validation
    batches carry the fixed draw as well: ``embeddings`` ``(B, S, E)`` and optionally
    ``log_posterior`` ``(B, S, C)``. ``val/failure`` and ``val/top5_failure`` are logged per
    validation run and appended to :attr:`validation_curve`; the weights of the lowest
    ``val/failure`` are kept and restored by :meth:`restore_best`.

    Args:
        candidate_ids: vocabulary ids of the ``C`` candidates, ``(C,)`` int64.
        candidate_table: their clean embeddings ``(C, E)`` (posterior-mean feature).
        d_model: transformer width.
        num_layers: transformer layers.
        num_heads: attention heads.
        max_length: longest sequence ``S``.
        dropout: dropout of the transformer layers.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        use_posterior: use the channel's ``log_posterior`` when it gives one.
        schedule: ``"constant"`` learning rate, or ``"cosine"``: a linear warm-up over the
            first ``warmup_fraction`` of the trainer's step budget, then a cosine decay to 0 at
            its end (early stopping may end training before).
        warmup_fraction: the warm-up's share of the step budget (``"cosine"`` only).
    """

    def __init__(
        self,
        candidate_ids: torch.Tensor,
        candidate_table: torch.Tensor,
        d_model: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        max_length: int = 64,
        dropout: float = 0.1,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.01,
        use_posterior: bool = True,
        schedule: Literal["constant", "cosine"] = "constant",
        warmup_fraction: float = 0.05,
    ) -> None:
        super().__init__()
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction}")
        self.schedule, self.warmup_fraction = schedule, warmup_fraction
        if candidate_ids.ndim != 1 or candidate_table.shape[:1] != candidate_ids.shape:
            raise ValueError(
                "candidate_ids must have shape (C,) and candidate_table (C, E), got "
                f"{tuple(candidate_ids.shape)} and {tuple(candidate_table.shape)}"
            )
        self.save_hyperparameters(ignore=["candidate_ids", "candidate_table"])
        num_candidates, embedding_dim = candidate_table.shape
        self.register_buffer("candidate_ids", candidate_ids.long().clone())
        self.register_buffer("candidate_table", candidate_table.detach().float().clone())
        self.use_posterior = use_posterior
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.input_norm = nn.LayerNorm(embedding_dim)
        self.posterior_norm = nn.LayerNorm(embedding_dim)
        self.input_projection = nn.Linear(2 * embedding_dim + 3, d_model)
        self.position = nn.Embedding(max_length, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, 4 * d_model, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.output_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_candidates)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.channel: Channel | None = None
        self.validation_curve: list[dict[str, float]] = []
        self._best_state: dict[str, torch.Tensor] | None = None
        self._best_failure = math.inf
        self.best_step: int | None = None
        self.training_end: dict[str, Any] = {}

    def attach(self, channel: Channel) -> InversionAttack:
        """Attack ``channel`` (the frozen layer); returns ``self``."""
        self.channel = channel
        return self

    def labels(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Candidate index of every token ``(B, S)``; ``-1`` for a token outside the candidates."""
        candidates: torch.Tensor = self.candidate_ids  # type: ignore[assignment]  # a buffer
        lookup = torch.full(
            (int(max(int(candidates.max()), int(input_ids.max()))) + 1,),
            -1,
            dtype=torch.long,
            device=input_ids.device,
        )
        lookup[candidates] = torch.arange(candidates.shape[0], device=input_ids.device)
        return lookup[input_ids]

    def forward(
        self, inputs: AttackInputs, attention_mask: torch.Tensor, noise_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``(B, S, C)`` over the candidates at every position."""
        embeddings = inputs.embeddings.float()
        features = [
            self.input_norm(embeddings),
            embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-6).log(),
            noise_mask.unsqueeze(-1).float(),
        ]
        log_posterior = inputs.log_posterior if self.use_posterior else None
        if log_posterior is not None:
            log_posterior = log_posterior.float()
            table: torch.Tensor = self.candidate_table  # type: ignore[assignment]  # a buffer
            best, guess = log_posterior.max(-1)
            features += [self.posterior_norm(table[guess]), best.unsqueeze(-1)]
        else:
            features += [torch.zeros_like(embeddings), torch.zeros_like(features[1])]
        hidden = self.input_projection(torch.cat(features, dim=-1))
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        hidden = self.encoder(
            hidden + self.position(positions), src_key_padding_mask=~attention_mask.bool()
        )
        logits: torch.Tensor = self.head(self.output_norm(hidden))
        if log_posterior is not None:
            logits = logits + log_posterior.float()
        return logits

    def _inputs(self, batch: dict[str, torch.Tensor]) -> AttackInputs:
        if "embeddings" in batch:
            return AttackInputs(batch["embeddings"], batch.get("log_posterior"))
        if self.channel is None:
            raise RuntimeError("attach(channel) before training on batches without embeddings")
        with torch.no_grad():
            return self.channel(batch["input_ids"], batch["noise_mask"].bool())

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        noise_mask = batch["noise_mask"].bool()
        logits = self(self._inputs(batch), batch["attention_mask"], noise_mask)
        labels = self.labels(batch["input_ids"])
        keep = noise_mask & (labels >= 0)
        loss = F.cross_entropy(logits[keep], labels[keep])
        self.log("train/loss", loss.detach(), on_step=True, batch_size=int(keep.sum()))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._hits = torch.zeros(2, dtype=torch.float64)
        self._count = 0

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        noise_mask = batch["noise_mask"].bool()
        logits = self(self._inputs(batch), batch["attention_mask"], noise_mask)
        labels = self.labels(batch["input_ids"])[noise_mask]
        top = logits[noise_mask].topk(min(5, logits.shape[-1]), dim=-1).indices
        hit = top == labels.unsqueeze(-1)
        self._hits += torch.stack([hit[:, 0].sum(), hit.any(-1).sum()]).double().cpu()
        self._count += int(labels.shape[0])

    def on_validation_epoch_end(self) -> None:
        if self._count == 0:
            return
        failure, top5 = (1.0 - self._hits / self._count).tolist()
        self.log_dict({"val/failure": failure, "val/top5_failure": top5})
        if self.trainer.sanity_checking:
            return
        self.validation_curve.append(
            {"step": float(self.global_step), "failure": failure, "top5_failure": top5}
        )
        if failure < self._best_failure:
            self._best_failure = failure
            self._best_state = copy.deepcopy(self.state_dict())
            self.best_step = int(self.global_step)

    def restore_best(self) -> InversionAttack:
        """Load the weights with the lowest validation failure seen (if any); returns ``self``."""
        if self._best_state is not None:
            self.load_state_dict(self._best_state)
        return self

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        if self.schedule == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_fraction * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(warmup_cosine, warmup, total)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def warmup_cosine(warmup: int, total: int, step: int) -> float:
    """Learning-rate factor at ``step``: linear warm-up over ``warmup`` steps, then a cosine
    decay from 1 to 0 at ``total`` steps.

    Example:
        >>> [round(warmup_cosine(2, 6, step), 2) for step in range(7)]
        [0.5, 1.0, 1.0, 0.85, 0.5, 0.15, 0.0]
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def inversion_guesses(
    attack: InversionAttack, batches: Iterable[dict[str, torch.Tensor]], top_k: int = 5
) -> torch.Tensor:
    """Vocabulary ids of the ``top_k`` best guesses at every noised position, ``(N, top_k)``.

    ``batches`` are validation batches (with ``embeddings``); positions are concatenated in
    batch order, row-major within a batch (as ``tensor[noise_mask]`` orders them).
    """
    attack.eval()
    candidates: torch.Tensor = attack.candidate_ids  # type: ignore[assignment]  # a buffer
    found = []
    for batch in batches:
        noise_mask = batch["noise_mask"].bool()
        logits = attack(attack._inputs(batch), batch["attention_mask"], noise_mask)
        found.append(candidates[logits[noise_mask].topk(top_k, dim=-1).indices])
    return torch.cat(found)


def train_inversion_attack(
    attack: InversionAttack,
    train_batches: Any,
    val_batches: list[dict[str, torch.Tensor]],
    *,
    max_epochs: int = 20,
    max_steps: int = -1,
    patience: int = 3,
    min_delta: float = 0.002,
    val_check_interval: int | None = None,
    logger: Any = False,
) -> InversionAttack:
    """Train ``attack`` until ``val/failure`` stops falling; returns it at its best weights.

    How training ended is recorded in ``attack.training_end``: ``steps`` (optimizer steps
    taken), ``epochs`` (steps over the steps of one epoch), ``stopped_early`` (``True`` when
    early stopping ended it, ``False`` when ``max_epochs`` did) and ``best_step`` (the step of
    the weights kept).

    Args:
        attack: an :class:`InversionAttack` with its channel attached.
        train_batches: a dataloader of training batches (``input_ids``, ``attention_mask``,
            ``noise_mask``).
        val_batches: validation batches with the fixed draw (``embeddings``, ...).
        max_epochs: upper bound on training epochs.
        max_steps: upper bound on training steps (``-1``: none).
        patience: validation runs without a fall of ``min_delta`` before stopping.
        min_delta: the smallest fall in failure that counts as one.
        val_check_interval: validate after every ``val_check_interval`` training steps of an
            epoch (Lightning counts them within the epoch, so an epoch shorter than twice the
            interval validates once); ``None``: once per epoch.
        logger: a Lightning logger, or ``False``.
    """
    from pytorch_lightning.callbacks import EarlyStopping

    stopper = EarlyStopping("val/failure", min_delta=min_delta, patience=patience, mode="min")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        max_steps=max_steps,
        val_check_interval=val_check_interval,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=logger,
        callbacks=[stopper],
    )
    from torch.utils.data import DataLoader

    val_loader: DataLoader[Any] = DataLoader(val_batches, batch_size=None)  # type: ignore[arg-type]
    trainer.validate(attack, dataloaders=val_loader, verbose=False)
    trainer.fit(attack, train_dataloaders=train_batches, val_dataloaders=val_loader)
    steps = int(trainer.global_step)
    per_epoch = trainer.num_training_batches
    attack.training_end = {
        "steps": steps,
        "epochs": steps / per_epoch if per_epoch and math.isfinite(per_epoch) else None,
        "stopped_early": bool(stopper.wait_count >= stopper.patience),
        "best_step": attack.best_step,
    }
    return attack.restore_best()
