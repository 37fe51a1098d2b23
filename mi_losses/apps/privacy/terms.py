"""Privacy terms for the context-free learned layer (issue 26, item 2): which makes hiding need noise.

:class:`TermObfuscation` is :class:`~mi_losses.apps.hf.task.HFObfuscation` with a chosen privacy
term (:class:`TokenTermSettings`):

- ``"vocabulary_mi"``: the exact known-prior MI of the layer's channel
  (:class:`~mi_losses.losses.VocabularyMutualInformation`, the frontier's ``learned_token``);
- ``"sub_batch"``: the sub-batch (L1Out) upper bound at token granularity
  (:class:`~mi_losses.losses.SubBatchMutualInformation`);
- ``"infonce"``: its InfoNCE lower bound from the same pass
  (:func:`~mi_losses.functional.mutual_information_bounds`);

plus ``entropy_weight`` times :func:`~mi_losses.functional.gaussian_entropy_log_loss` of the
noised tokens' stds (the reference API's entropy term: minus the noise's entropy per element), and
optionally a many-to-one mean (``num_prototypes``: every token pulled towards the k-means
prototype of its cluster, :class:`~mi_losses.noise.LearnedTokenNoise`). The loss is
``alpha * (term + entropy_weight * entropy_log_loss) + (1 - alpha) * retrieval utility``.
:func:`mi_losses.apps.privacy.frontier.run` judges such layers (``--token_terms``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, get_args

import torch

from mi_losses._validation import check_choice
from mi_losses.apps.hf.task import HFObfuscation
from mi_losses.functional import gaussian_entropy_log_loss, mutual_information_bounds
from mi_losses.losses import (
    RetrievalDistillation,
    SubBatchMutualInformation,
    VocabularyMutualInformation,
)
from mi_losses.noise import LearnedTokenNoise, NoisyEmbeddings

TokenTerm = Literal["vocabulary_mi", "sub_batch", "infonce"]
TERMS = get_args(TokenTerm)


@dataclass(frozen=True)
class TokenTermSettings:
    """One context-free layer's training recipe (plain data, settable from the command line).

    Args:
        term: ``"vocabulary_mi"``, ``"sub_batch"`` or ``"infonce"`` (see the module docstring).
        alpha: weight of the privacy side; the retrieval utility gets ``1 - alpha``.
        entropy_weight: weight of ``gaussian_entropy_log_loss`` within the privacy side.
        num_prototypes: ``> 0``: a many-to-one mean with that many prototypes, fitted on the
            training text's tokens.
        prototype_pull: the prototype gates' initial value, in ``[0, 1]``.
        mean_scale: bound of the layer's own learned shift per coordinate (``0``: none, so a
            gate of 1 merges a cluster exactly).
    """

    term: TokenTerm = "vocabulary_mi"
    alpha: float = 0.3
    entropy_weight: float = 0.0
    num_prototypes: int = 0
    prototype_pull: float = 1.0
    mean_scale: float = 0.05

    def __post_init__(self) -> None:
        check_choice("TokenTermSettings", "term", self.term, TERMS)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"TokenTermSettings: alpha must lie in [0, 1], got {self.alpha}")
        if not self.entropy_weight >= 0.0:
            raise ValueError(
                f"TokenTermSettings: entropy_weight must be >= 0, got {self.entropy_weight}"
            )

    @property
    def objective(self) -> str:
        """The point's ``objective``: the term, then the options that differ from the default."""
        name = {"vocabulary_mi": "exact_vocabulary_mi"}.get(self.term, self.term)
        if self.entropy_weight:
            name += f"+entropy_{self.entropy_weight:g}"
        if self.num_prototypes:
            name += f"+prototypes_{self.num_prototypes}_pull_{self.prototype_pull:g}"
        if self.mean_scale != 0.05:
            name += f"+mean_scale_{self.mean_scale:g}"
        return name


class TermObfuscation(HFObfuscation):
    """:class:`~mi_losses.apps.hf.task.HFObfuscation` whose privacy loss is ``term`` plus
    ``entropy_weight`` times the noise's entropy log loss (see the module docstring).

    Args:
        term: ``"vocabulary_mi"``, ``"sub_batch"`` or ``"infonce"``; it picks the
            ``privacy_loss`` passed on (do not pass one).
        entropy_weight: weight of :func:`~mi_losses.functional.gaussian_entropy_log_loss`.
        **kwargs: the other arguments of ``HFObfuscation``.
    """

    def __init__(self, term: TokenTerm, entropy_weight: float = 0.0, **kwargs: Any) -> None:
        check_choice("TermObfuscation", "term", term, TERMS)
        if "privacy_loss" in kwargs:
            raise ValueError("TermObfuscation: term sets the privacy loss; do not pass one")
        if term == "vocabulary_mi":
            privacy_loss: Any = VocabularyMutualInformation()
        else:
            privacy_loss = SubBatchMutualInformation(granularity="token")
        super().__init__(privacy_loss=privacy_loss, **kwargs)
        self.term = term
        self.entropy_weight = float(entropy_weight)

    def privacy(
        self, input_ids: torch.Tensor, noise_mask: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, NoisyEmbeddings]:
        """The term (+ the weighted entropy log loss) of one batch, its clean and noisy embeddings."""
        if self.term == "infonce":
            layer = self.token_noise()
            if layer is None:
                raise ValueError("TermObfuscation: the infonce term needs a context-free layer")
            table = self.wrapper.embedding_table
            clean = table[input_ids]
            out = layer(input_ids, table, noise_mask)
            arguments = (out.means, out.stds, noise_mask, clean, out.noisy)
            value = mutual_information_bounds(*arguments, granularity="token").lower
        else:
            value, clean, out = super().privacy(input_ids, noise_mask, attention_mask)
        if self.entropy_weight:
            value = value + self.entropy_weight * gaussian_entropy_log_loss(out.stds, noise_mask)
        return value, clean, out


def term_task(
    settings: TokenTermSettings,
    vocab_size: int,
    *,
    model_name_or_path: str | None = None,
    hidden_dim: int = 128,
) -> TermObfuscation:
    """The frontier's context-free layer (``LearnedTokenNoise``, init std 0.15, the ``k = 20``
    frequency rule as the start, retrieval utility at temperature 0.05) on ``settings``' term."""
    layer = partial(
        LearnedTokenNoise,
        hidden_dim=hidden_dim,
        init_std=0.15,
        vocab_size=vocab_size,
        num_prototypes=settings.num_prototypes,
        prototype_pull=settings.prototype_pull,
        mean_scale=settings.mean_scale,
    )
    return TermObfuscation(
        settings.term,
        settings.entropy_weight,
        model_name_or_path=model_name_or_path,
        noise_layer=layer,
        utility_loss=RetrievalDistillation(temperature=0.05),
        privacy_weight=settings.alpha,
        utility_weight=1.0 - settings.alpha,
        warm_start_k=20,
    )
