"""Judge a noise layer on held-out text: how useful the noisy input stays, how private it is.

- :class:`SentenceEncoder`: a frozen ``transformers`` model as word embeddings in, mean-pooled
  sentence embeddings out; :func:`sentence_utility`: retrieval@1 and sentence cosine.
- :func:`token_privacy`: the one-token attackers (Bayes-optimal, nearest neighbour), the exact
  known-prior MI, Fano's floor, per training-frequency bucket (:func:`frequency_buckets`).
- :func:`evaluate_layer` (context-free token layers), :func:`evaluate_context_layer` (layers
  that read context), :class:`Evaluation` and :func:`compare` (the layer against isotropic
  noise of equal utility and the frequency rule): the report of ``mi-losses-hf``.
- :func:`format_table` (Markdown, every column) and :func:`format_terminal` (narrow).
"""

from mi_losses.evaluation.layers import (
    Evaluation,
    compare,
    evaluate_context_layer,
    evaluate_layer,
    report_layers,
)
from mi_losses.evaluation.sentence import (
    Batch,
    SentenceEncoder,
    clean_sentence_embeddings,
    sentence_utility,
)
from mi_losses.evaluation.table import COLUMNS, ROW_ATTACKS, format_table, format_terminal
from mi_losses.evaluation.tokens import (
    BUCKET_EDGES,
    bucket_names,
    frequency_buckets,
    token_privacy,
)

__all__ = [
    "BUCKET_EDGES",
    "COLUMNS",
    "ROW_ATTACKS",
    "Batch",
    "Evaluation",
    "SentenceEncoder",
    "bucket_names",
    "clean_sentence_embeddings",
    "compare",
    "evaluate_context_layer",
    "evaluate_layer",
    "format_table",
    "format_terminal",
    "frequency_buckets",
    "report_layers",
    "sentence_utility",
    "token_privacy",
]
