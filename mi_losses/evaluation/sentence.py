"""Sentence embeddings of a frozen ``transformers`` model, and how much of them noise keeps.

:class:`SentenceEncoder` reads (noisy) input embeddings and returns the mean-pooled last hidden
state (sentence-transformers' sentence embedding without its L2 normalisation; utility is judged
by cosine, which ignores the norm). :func:`sentence_utility` is the retrieval utility: the mean
cosine of noisy and clean sentence embeddings, and how often a noisy sentence's nearest clean
sentence is its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mi_losses.evaluation.sequences import Batch
from mi_losses.huggingface.model import frozen_model
from mi_losses.losses.distillation import mean_pool


class SentenceEncoder(nn.Module):
    """A frozen ``transformers`` model seen as word embeddings in, sentence embeddings out.

    The model stays frozen and in eval mode; gradients still flow through it to its
    ``inputs_embeds``. The sentence embedding is the mean of the last hidden state over the
    attended positions (for a language-model head, the last of ``hidden_states``).

    Args:
        model: a ``transformers`` model (``get_input_embeddings()``, ``inputs_embeds``).
    """

    model: Any

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = frozen_model(type(self).__name__, model)
        self.train(False)

    def train(self, mode: bool = True) -> SentenceEncoder:
        """Always eval mode: the model is frozen, its dropout stays off."""
        return super().train(False)

    @property
    def word_embedding_table(self) -> torch.Tensor:
        """The input embedding table ``(V, E)`` (a frozen parameter)."""
        return self.model.get_input_embeddings().weight  # type: ignore[no-any-return]

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``(B, S, E)`` of ``input_ids`` ``(B, S)``: rows of the table."""
        return self.model.get_input_embeddings()(input_ids)  # type: ignore[no-any-return]

    def sentence_embedding(
        self, word_embeddings: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean-pooled last hidden state ``(B, E')`` of (noisy) word embeddings ``(B, S, E)``."""
        output = self.model(
            inputs_embeds=word_embeddings.to(self.word_embedding_table.dtype),
            attention_mask=attention_mask.long(),
            output_hidden_states=True,
        )
        hidden = getattr(output, "last_hidden_state", None)
        hidden = output.hidden_states[-1] if hidden is None else hidden
        return mean_pool(hidden, attention_mask)


@torch.no_grad()
def clean_sentence_embeddings(encoder: SentenceEncoder, batches: Iterable[Batch]) -> torch.Tensor:
    """Sentence embeddings ``(N, E')`` of the clean sequences, in batch order."""
    return torch.cat(
        [
            encoder.sentence_embedding(
                encoder.embed_tokens(batch["input_ids"]), batch["attention_mask"].bool()
            )
            for batch in batches
        ]
    )


def sentence_utility(
    noisy_sentences: torch.Tensor, clean_sentences: torch.Tensor
) -> dict[str, float]:
    """``sentence_cosine`` and ``retrieval_at_1`` of noisy vs clean sentence embeddings ``(N, E)``.

    ``sentence_cosine``: the mean cosine of row ``i`` of both; ``retrieval_at_1``: the share of
    noisy rows whose most similar clean row (cosine, among all ``N``) is their own.

    Example:
        >>> clean = torch.eye(3)
        >>> sentence_utility(clean + 0.1, clean)["retrieval_at_1"]
        1.0
    """
    if noisy_sentences.ndim != 2 or noisy_sentences.shape != clean_sentences.shape:
        raise ValueError(
            f"noisy_sentences must have shape (N, E) like clean_sentences "
            f"{tuple(clean_sentences.shape)}, got {tuple(noisy_sentences.shape)}"
        )
    similarity = F.normalize(noisy_sentences, dim=-1) @ F.normalize(clean_sentences, dim=-1).T
    target = torch.arange(similarity.shape[0], device=similarity.device)
    return {
        "sentence_cosine": float(similarity.diagonal().mean()),
        "retrieval_at_1": float((similarity.argmax(-1) == target).float().mean()),
    }
