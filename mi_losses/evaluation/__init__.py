"""Judge a noise layer on held-out text: how useful the noisy input stays, how private it is.

- :class:`SentenceEncoder`: a frozen ``transformers`` model as word embeddings in, mean-pooled
  sentence embeddings out; :func:`sentence_utility`: retrieval@1 and sentence cosine.
- :func:`token_privacy`: the one-token attackers (Bayes-optimal, nearest neighbour), the exact
  known-prior MI, Fano's floor, per training-frequency bucket (:func:`frequency_buckets`).
- :func:`evaluate_layer` (context-free token layers), :func:`evaluate_context_layer` (layers
  that read context), :class:`Evaluation` and :func:`compare` (the layer against isotropic
  noise of equal utility and the frequency rule): the report of ``mi-losses-hf``.
- :func:`format_table` (Markdown, every column) and :func:`format_terminal` (narrow).
- :func:`judge`: one layer (a *channel*: :class:`GaussianTokenChannel`, :class:`ReleaseChannel`,
  :class:`SequenceChannel`) judged by every attacker that applies, the learned inversion attack
  that reads the whole sequence included, on one shared noise draw of :class:`StudyData`.
"""

from mi_losses.evaluation.channels import (
    Draw,
    GaussianTokenChannel,
    ReleaseChannel,
    SequenceChannel,
    StudyChannel,
)
from mi_losses.evaluation.judge import InversionSettings, judge
from mi_losses.evaluation.layers import (
    Evaluation,
    compare,
    evaluate_context_layer,
    evaluate_layer,
    report_layers,
)
from mi_losses.evaluation.points import check_points, format_points
from mi_losses.evaluation.sentence import (
    SentenceEncoder,
    clean_sentence_embeddings,
    sentence_utility,
)
from mi_losses.evaluation.sequences import (
    Batch,
    SequenceDataset,
    StudyData,
    TokenizedSequences,
    sequence_batches,
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
    "Draw",
    "Evaluation",
    "GaussianTokenChannel",
    "InversionSettings",
    "ReleaseChannel",
    "SentenceEncoder",
    "SequenceChannel",
    "SequenceDataset",
    "StudyChannel",
    "StudyData",
    "TokenizedSequences",
    "bucket_names",
    "check_points",
    "clean_sentence_embeddings",
    "compare",
    "evaluate_context_layer",
    "evaluate_layer",
    "format_points",
    "format_table",
    "format_terminal",
    "frequency_buckets",
    "judge",
    "report_layers",
    "sentence_utility",
    "sequence_batches",
    "token_privacy",
]
