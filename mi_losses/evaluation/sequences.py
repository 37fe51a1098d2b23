"""Fixed-length token sequences and the fixed pieces of a privacy study on them.

- :class:`TokenizedSequences`: token ids with their attention and noise masks, all ``(N, S)``;
  :class:`SequenceDataset` serves them to a ``DataLoader`` (:func:`training_loader`), :func:`sequence_batches` cuts them
  into fixed-order batches.
- :class:`StudyData`: training and validation sequences, the vocabulary table, the training
  token counts (the attacker's prior) and the clean sentence embeddings of the validation
  sequences (the retrieval gallery): what :func:`~mi_losses.evaluation.judge` needs besides the
  channel and the encoder. :meth:`StudyData.disjoint_training` splits its training text into a
  layer's part and an attacker's part.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader, Dataset

Batch = dict[str, torch.Tensor]
"""A batch of sequences: ``input_ids``, ``attention_mask``, ``noise_mask``, each ``(B, S)``."""


@dataclass
class TokenizedSequences:
    """Fixed-length token sequences, all of shape ``(N, S)``.

    Attributes:
        input_ids: token ids, ``int64``.
        attention_mask: true at real tokens (special tokens included), false at padding.
        noise_mask: true at the tokens to obfuscate: attended and not a special token.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    noise_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, index: slice | torch.Tensor) -> TokenizedSequences:
        return TokenizedSequences(
            self.input_ids[index], self.attention_mask[index], self.noise_mask[index]
        )


class SequenceDataset(Dataset[Batch]):
    """Map-style view of :class:`TokenizedSequences`: item ``i`` is a dict of three ``(S,)`` tensors."""

    def __init__(self, sequences: TokenizedSequences) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.sequences.input_ids[index],
            "attention_mask": self.sequences.attention_mask[index],
            "noise_mask": self.sequences.noise_mask[index],
        }


def sequence_batches(sequences: TokenizedSequences, batch_size: int) -> list[Batch]:
    """Fixed-order batches (dicts of ``input_ids``, ``attention_mask``, ``noise_mask``)."""
    return [
        {
            "input_ids": sequences.input_ids[start : start + batch_size],
            "attention_mask": sequences.attention_mask[start : start + batch_size].bool(),
            "noise_mask": sequences.noise_mask[start : start + batch_size].bool(),
        }
        for start in range(0, len(sequences), batch_size)
    ]


def training_loader(
    sequences: TokenizedSequences, batch_size: int, seed: int
) -> DataLoader[dict[str, torch.Tensor]]:
    """Shuffled training batches of ``batch_size`` sequences (the last partial one dropped),
    their order seeded by ``seed``."""
    return DataLoader(
        SequenceDataset(sequences),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )


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

    def disjoint_training(self, attack_fraction: float, seed: int) -> tuple[StudyData, StudyData]:
        """The study for a judge on text the layer never trained on: ``(layer's, attacker's)``.

        A permutation of the training sequences from ``torch.Generator().manual_seed(seed)``
        gives the attacker its first ``round(attack_fraction * N)`` and the layer the rest (each
        part in its original order). Only ``train`` differs between the two: both keep the
        table, the validation text and the ``counts`` of the whole training text (so the prior,
        the candidates and the frequency rule's ranking are the same for every layer).

        Args:
            attack_fraction: share of the training sequences for the attacker, in ``(0, 1)``.
            seed: seed of the permutation.

        Example:
            >>> ids = torch.arange(8).reshape(4, 2)
            >>> ones = torch.ones(4, 2, dtype=torch.bool)
            >>> data = StudyData(TokenizedSequences(ids, ones, ones), TokenizedSequences(ids, ones, ones),
            ...                  torch.zeros(8, 3), torch.ones(8), torch.zeros(4, 3))
            >>> layer, attack = data.disjoint_training(0.5, seed=0)
            >>> len(layer.train), len(attack.train)
            (2, 2)
        """
        count = len(self.train)
        if not 0.0 < attack_fraction < 1.0:
            raise ValueError(f"attack_fraction must lie in (0, 1), got {attack_fraction}")
        attack_count = round(attack_fraction * count)
        if not 0 < attack_count < count:
            raise ValueError(
                f"attack_fraction {attack_fraction} of {count} training sequences leaves a part "
                "empty"
            )
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
        attack_rows = order[:attack_count].sort().values
        layer_rows = order[attack_count:].sort().values
        return replace(self, train=self.train[layer_rows]), replace(
            self, train=self.train[attack_rows]
        )
