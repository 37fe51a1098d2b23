"""The fixed pieces of the privacy study, computed once and cached on disk.

:func:`load_study_data`: :class:`~mi_losses.evaluation.StudyData` of the main job's text (:class:`~mi_losses.apps.hf.data.HFTextDataModule`: CPython's documentation,
split by topic), tokenised into sequences of 32 tokens; the word-embedding table; the training token
counts, the attacker's prior (counts plus 0.5 per vocabulary token, as in the MiniLM study) and
the *candidates* (the tokens seen in training, which a learned attacker can be trained on); the
clean sentence embeddings of the validation sequences (the retrieval gallery).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mi_losses.evaluation.sequences import StudyData


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
