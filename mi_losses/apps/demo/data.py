"""Built-in synthetic data: token embeddings of random sequences over a fixed random vocabulary."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset


class SyntheticEmbeddingDataset(Dataset):
    """``num_sequences`` sequences of token embeddings and their noise masks, made up front.

    Item ``n`` is a dict with ``embeddings`` ``(S, E)`` float, ``noise_mask`` ``(S,)`` bool
    (true on the real tokens, false on the padding tail) and ``token_ids`` ``(S,)`` (``-1`` on
    padding). Padding positions hold the zero vector.
    """

    def __init__(
        self,
        table: torch.Tensor,
        num_sequences: int,
        sequence_length: int,
        min_length: int,
        generator: torch.Generator,
    ) -> None:
        vocab_size, _ = table.shape
        token_ids = torch.randint(vocab_size, (num_sequences, sequence_length), generator=generator)
        lengths = torch.randint(
            min_length, sequence_length + 1, (num_sequences, 1), generator=generator
        )
        self.noise_mask = torch.arange(sequence_length).unsqueeze(0) < lengths
        self.token_ids = torch.where(self.noise_mask, token_ids, -1)
        self.embeddings = table[token_ids] * self.noise_mask.unsqueeze(-1)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "embeddings": self.embeddings[index],
            "noise_mask": self.noise_mask[index],
            "token_ids": self.token_ids[index],
        }


class SyntheticEmbeddingDataModule(pl.LightningDataModule):
    """Token embeddings of random sequences over a fixed random vocabulary table (no download).

    The vocabulary table ``(vocab_size, embedding_dim)`` is drawn once from ``N(0, 1/E)`` with
    ``seed`` (so a token embedding has norm about 1), and every sequence draws its tokens
    uniformly from it. Each sequence has a random length in ``[min_length, sequence_length]``;
    the tail is padding, not noised (``noise_mask`` false). Batches are dicts of
    ``embeddings`` ``(B, S, E)``, ``noise_mask`` ``(B, S)`` and ``token_ids`` ``(B, S)``;
    incomplete batches are dropped, so every batch has the even size the sub-batch estimators
    need.

    Args:
        vocab_size: number of distinct tokens.
        embedding_dim: ``E``.
        sequence_length: ``S``, padded length of every sequence.
        min_length: shortest sequence (real tokens), ``1 <= min_length <= sequence_length``.
        num_train: training sequences per epoch.
        num_val: validation sequences (also used for ``test``).
        batch_size: ``B``, even and at least 2.
        seed: seed of the table and of the sequences.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        embedding_dim: int = 16,
        sequence_length: int = 8,
        min_length: int = 4,
        num_train: int = 2048,
        num_val: int = 256,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for option, value in (
            ("vocab_size", vocab_size),
            ("embedding_dim", embedding_dim),
            ("sequence_length", sequence_length),
        ):
            if value < 1:
                raise ValueError(
                    f"SyntheticEmbeddingDataModule: {option} must be >= 1, got {value}"
                )
        if not 1 <= min_length <= sequence_length:
            raise ValueError(
                "SyntheticEmbeddingDataModule: min_length must lie in [1, sequence_length="
                f"{sequence_length}], got {min_length}"
            )
        if batch_size < 2 or batch_size % 2:
            raise ValueError(
                "SyntheticEmbeddingDataModule: batch_size must be even and at least 2 (the "
                f"estimators split each batch in halves), got {batch_size}"
            )
        for option, value in (("num_train", num_train), ("num_val", num_val)):
            if value < batch_size:
                raise ValueError(
                    f"SyntheticEmbeddingDataModule: {option} must be at least batch_size="
                    f"{batch_size} (incomplete batches are dropped), got {value}"
                )
        self.save_hyperparameters()
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.sequence_length = sequence_length
        self.min_length = min_length
        self.num_train = num_train
        self.num_val = num_val
        self.batch_size = batch_size
        self.seed = seed
        self.train_set: SyntheticEmbeddingDataset | None = None
        self.val_set: SyntheticEmbeddingDataset | None = None

    def vocabulary_table(self) -> torch.Tensor:
        """The fixed ``(vocab_size, embedding_dim)`` table, the same for a given ``seed``."""
        generator = torch.Generator().manual_seed(self.seed)
        table = torch.randn(self.vocab_size, self.embedding_dim, generator=generator)
        return table / math.sqrt(self.embedding_dim)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        table = self.vocabulary_table()
        generator = torch.Generator().manual_seed(self.seed + 1)
        shape = (self.sequence_length, self.min_length, generator)
        self.train_set = SyntheticEmbeddingDataset(table, self.num_train, *shape)
        self.val_set = SyntheticEmbeddingDataset(table, self.num_val, *shape)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=self.batch_size, drop_last=True)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
