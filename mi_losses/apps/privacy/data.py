"""The fixed pieces of the privacy study, computed once and cached on disk.

The main job's text (:class:`~mi_losses.apps.hf.data.HFTextDataModule`: CPython's documentation,
split by topic), tokenised into sequences of 32 tokens; the word-embedding table; the training token
counts, the attacker's prior (counts plus 0.5 per vocabulary token, as in the MiniLM study) and
the *candidates* (the tokens seen in training, which a learned attacker can be trained on); the
clean sentence embeddings of the validation sequences (the retrieval gallery).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mi_losses.apps.hf.data import TokenizedSequences

PRIOR_SMOOTHING = 0.5
"""Pseudo-count of every vocabulary token in the attacker's prior (as in the MiniLM study)."""


@dataclass
class StudyData:
    """Everything an evaluation needs besides the encoder.

    Attributes:
        train: training sequences ``(N_train, S)``.
        val: validation sequences ``(N_val, S)``.
        table: the word-embedding table ``(V, E)``.
        counts: noised-token counts of the training text ``(V,)``.
        clean_sentences: clean sentence embeddings of ``val`` ``(N_val, E)``.
    """

    train: TokenizedSequences
    val: TokenizedSequences
    table: torch.Tensor
    counts: torch.Tensor
    clean_sentences: torch.Tensor

    @property
    def prior(self) -> torch.Tensor:
        """The attacker's prior over the vocabulary ``(V,)``: smoothed training counts."""
        smoothed = self.counts.double() + PRIOR_SMOOTHING
        return (smoothed / smoothed.sum()).float()

    @property
    def candidates(self) -> torch.Tensor:
        """Vocabulary ids of the tokens seen in training ``(C,)``, ascending."""
        return torch.nonzero(self.counts > 0).squeeze(-1)

    def to_dict(self) -> dict[str, torch.Tensor]:
        data = {"table": self.table, "counts": self.counts, "clean_sentences": self.clean_sentences}
        for split in ("train", "val"):
            sequences: TokenizedSequences = getattr(self, split)
            data[f"{split}_input_ids"] = sequences.input_ids
            data[f"{split}_attention_mask"] = sequences.attention_mask
            data[f"{split}_noise_mask"] = sequences.noise_mask
        return data

    @classmethod
    def from_dict(cls, data: dict[str, torch.Tensor]) -> StudyData:
        splits = {
            split: TokenizedSequences(
                data[f"{split}_input_ids"],
                data[f"{split}_attention_mask"],
                data[f"{split}_noise_mask"],
            )
            for split in ("train", "val")
        }
        return cls(
            splits["train"], splits["val"], data["table"], data["counts"], data["clean_sentences"]
        )


def load_study_data(
    encoder: Any,
    cache_dir: str | None = None,
    *,
    num_val: int = 192,
    max_length: int = 32,
    seed: int = 0,
) -> StudyData:
    """The study's data, from ``cache_dir/study_data_{num_val}_{max_length}_{seed}.pt`` if there.

    Args:
        encoder: the frozen :class:`~mi_losses.evaluation.SentenceEncoder`.
        cache_dir: folder of the cache (created); ``None`` = no cache.
        num_val: validation sequences (the retrieval gallery).
        max_length: tokens per sequence.
        seed: seed of the topic split.
    """
    from mi_losses.apps.hf.data import HFTextDataModule
    from mi_losses.evaluation import clean_sentence_embeddings

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"study_data_{num_val}_{max_length}_{seed}.pt"
        if path.is_file():
            return StudyData.from_dict(torch.load(path))
    datamodule = HFTextDataModule(max_length=max_length, num_val=num_val, seed=seed)
    datamodule.setup()
    assert datamodule.train_sequences is not None and datamodule.val_sequences is not None
    table = encoder.word_embedding_table.detach().clone()
    data = StudyData(
        datamodule.train_sequences,
        datamodule.val_sequences,
        table,
        datamodule.train_token_counts(table.shape[0]),
        clean_sentence_embeddings(encoder, datamodule.val_dataloader()),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data.to_dict(), path)
    return data
