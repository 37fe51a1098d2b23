"""Local text for any tokenizer: the MiniLM case study's corpus (CPython's ``pydoc_data``) by default.

:class:`HFTextDataModule` is :class:`~mi_losses.apps.minilm.data.PydocTextDataModule` with the
tokenizer of ``model_name_or_path`` (any local checkpoint directory; ``None``: the packaged
MiniLM) and, optionally, a text file of your own instead of the documentation. A tokenizer
without a padding token (GPT-2, Llama) pads with its end-of-sequence token; padding is never
noised (``attention_mask``), nor are special tokens (``special_tokens_mask`` and
``all_special_ids``).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from mi_losses.apps.minilm.data import PydocTextDataModule, chunk_words
from mi_losses.apps.minilm.model import load_tokenizer


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


class HFTextDataModule(PydocTextDataModule):
    """Fixed-length token sequences of local text for the model at ``model_name_or_path``.

    Args:
        model_name_or_path: the checkpoint directory whose tokenizer is used (linked to
            ``model.model_name_or_path`` by the CLI); ``None``: the packaged MiniLM.
        text_path: a UTF-8 text file (paragraphs separated by blank lines); ``None``: CPython's
            documentation, split by topic.
        max_length, words_per_chunk, val_fraction, num_val, batch_size, eval_batch_size, seed: as
            in :class:`~mi_losses.apps.minilm.data.PydocTextDataModule`.
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
        super().__init__(
            max_length=max_length,
            words_per_chunk=words_per_chunk,
            val_fraction=val_fraction,
            num_val=num_val,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            model_path=model_name_or_path,
        )
        self.text_path = text_path

    def load_tokenizer(self) -> Any:
        tokenizer = load_tokenizer(self.model_path)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(
                    f"the tokenizer of {self.model_path} has neither a padding nor an "
                    "end-of-sequence token to pad with"
                )
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def split(self) -> tuple[list[str], list[str]]:
        if self.text_path is None:
            return super().split()
        return file_texts(self.text_path, self.words_per_chunk, self.val_fraction, self.seed)
