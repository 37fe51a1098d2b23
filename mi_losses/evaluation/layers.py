"""How private and how useful a noise layer is, on held-out text, with one seeded noise draw.

:func:`evaluate_layer` judges a context-free token layer (:class:`~mi_losses.noise.TokenNoise`):
the utility (:func:`~mi_losses.evaluation.sentence_utility`), the one-token attackers and the
exact known-prior MI (:func:`~mi_losses.evaluation.token_privacy`), and the sub-batch estimate
at token granularity (``sub_batch_mi_upper``, an upper bound in expectation) with its InfoNCE
lower bound from the same pass (``sub_batch_mi_lower``). :func:`evaluate_context_layer` judges a
layer that reads context (no known channel per token: utility, nearest-neighbour attacks and the
sub-batch bounds). :class:`Evaluation` holds what every evaluation of one run shares;
:func:`compare` puts the layer against isotropic noise of equal sentence cosine and the
frequency rule. Two evaluations of one layer agree exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import torch

from mi_losses.attacks.nearest import nearest_token_ids
from mi_losses.evaluation.sentence import (
    SentenceEncoder,
    clean_sentence_embeddings,
    sentence_utility,
)
from mi_losses.evaluation.sequences import Batch
from mi_losses.evaluation.tokens import frequency_buckets, token_privacy
from mi_losses.functional import (
    mutual_information_bounds,
    mutual_information_sub_batch_estimate,
    token_prior,
)
from mi_losses.noise import FrequencyRuleNoise, IsotropicNoise, NoisyEmbeddings, TokenNoise


class _SubBatchBounds:
    """Query-weighted averages of the sub-batch estimate and its InfoNCE lower bound."""

    def __init__(self) -> None:
        self.upper, self.lower, self.count = 0.0, 0.0, 0

    def add(self, out: NoisyEmbeddings, noise_mask: torch.Tensor, clean: torch.Tensor) -> None:
        """Add one batch (skipped when odd: the estimator halves the batch)."""
        if noise_mask.shape[0] % 2:
            return
        arguments = (out.means, out.stds, noise_mask, clean, out.noisy)
        estimate = mutual_information_sub_batch_estimate(*arguments, granularity="token")
        count = int(estimate.num_queries)
        self.upper += float(estimate.value) * count
        self.lower += (
            float(mutual_information_bounds(*arguments, granularity="token").lower) * count
        )
        self.count += count

    def result(self) -> dict[str, float | None]:
        count = self.count
        return {
            "sub_batch_mi_upper": self.upper / count if count else None,
            "sub_batch_mi_lower": self.lower / count if count else None,
        }


@torch.no_grad()
def evaluate_layer(
    encoder: SentenceEncoder,
    layer: TokenNoise,
    batches: Iterable[Batch],
    prior: torch.Tensor,
    buckets: torch.Tensor,
    *,
    clean_sentences: torch.Tensor | None = None,
    seed: int = 0,
    privacy: bool = True,
    nearest_neighbour: bool = True,
    vocab_chunk_size: int = 8192,
) -> dict[str, Any]:
    """Privacy and utility of a context-free ``layer`` on ``batches`` (module docstring).

    Args:
        encoder: the frozen model.
        layer: the context-free noise layer.
        batches: validation batches (dicts of ``input_ids``, ``attention_mask``, ``noise_mask``).
        prior: the attacker's prior over the vocabulary ``(V,)`` (smoothed training counts).
        buckets: frequency bucket of every vocabulary token ``(V,)``
            (:func:`~mi_losses.evaluation.frequency_buckets`).
        clean_sentences: precomputed :func:`clean_sentence_embeddings` of ``batches``, if any.
        seed: seed of the noise.
        privacy: compute the attacks and the mutual information (``False``: utility only).
        nearest_neighbour: also run the three nearest-neighbour attacks.
        vocab_chunk_size: vocabulary rows scored at once.

    Returns:
        A dict of the metrics, plus ``tokens_attacked``, ``sequences`` and ``noise_std_mean``.
    """
    batches = list(batches)
    if clean_sentences is None:
        clean_sentences = clean_sentence_embeddings(encoder, batches)
    table = encoder.word_embedding_table.detach()
    noisy_sentences, noisy_tokens, token_ids = [], [], []
    bounds = _SubBatchBounds()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in batches:
            noise_mask = batch["noise_mask"].bool()
            out = layer(batch["input_ids"], table, noise_mask)
            attention = batch["attention_mask"].bool()
            noisy_sentences.append(encoder.sentence_embedding(out.noisy, attention))
            noisy_tokens.append(out.noisy[noise_mask])
            token_ids.append(batch["input_ids"][noise_mask])
            if privacy:
                bounds.add(out, noise_mask, table[batch["input_ids"]])
    result: dict[str, Any] = sentence_utility(torch.cat(noisy_sentences), clean_sentences)
    result["sequences"] = int(clean_sentences.shape[0])
    noisy = torch.cat(noisy_tokens)
    ids = torch.cat(token_ids)
    means, stds = layer.vocabulary_parameters(table)
    result["noise_std_mean"] = float(stds[ids].mean())
    if not privacy:
        return result
    result["tokens_attacked"] = int(ids.shape[0])
    result.update(
        token_privacy(
            noisy,
            ids,
            table,
            prior,
            means,
            stds,
            buckets,
            vocab_chunk_size=vocab_chunk_size,
            nearest_neighbour=nearest_neighbour,
        )
    )
    result.update(bounds.result())
    return result


@torch.no_grad()
def evaluate_context_layer(
    encoder: SentenceEncoder,
    wrapper: Any,
    batches: Iterable[Batch],
    *,
    clean_sentences: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Utility, nearest-neighbour attacks and sub-batch bounds of a layer that reads context.

    ``wrapper`` is a :class:`~mi_losses.huggingface.NoisyInputEmbeddingsModel` (its ``embed``
    and ``add_noise``); the other arguments as in :func:`evaluate_layer`.
    """
    batches = list(batches)
    if clean_sentences is None:
        clean_sentences = clean_sentence_embeddings(encoder, batches)
    table = wrapper.embedding_table.detach()
    sentences, noisy_tokens, token_ids, stds = [], [], [], []
    bounds = _SubBatchBounds()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in batches:
            mask, attention = batch["noise_mask"].bool(), batch["attention_mask"].bool()
            clean = wrapper.embed(batch["input_ids"])
            out = wrapper.add_noise(clean, mask, attention)
            sentences.append(encoder.sentence_embedding(out.noisy, attention))
            noisy_tokens.append(out.noisy[mask])
            token_ids.append(batch["input_ids"][mask])
            stds.append(out.stds[mask])
            bounds.add(out, mask, clean)
    result: dict[str, Any] = sentence_utility(torch.cat(sentences), clean_sentences)
    noisy, ids = torch.cat(noisy_tokens), torch.cat(token_ids)
    result["sequences"] = int(clean_sentences.shape[0])
    result["tokens_attacked"] = int(ids.shape[0])
    result["noise_std_mean"] = float(torch.cat(stds).mean())
    for metric in ("cosine", "l2"):
        found = nearest_token_ids(noisy, table, metric)
        result[f"nn_failure_{metric}"] = 1.0 - float((found == ids).float().mean())
    result.update(bounds.result())
    return result


class Evaluation:
    """The fixed pieces of every evaluation of a run: encoder, batches, prior, buckets, clean sentences.

    Args:
        encoder: the frozen model.
        batches: validation batches.
        counts: training token counts ``(V,)``.
        smoothing: pseudo-count added to every token for the attacker's prior.
        seed: seed of the evaluation noise.
    """

    def __init__(
        self,
        encoder: SentenceEncoder,
        batches: list[Batch],
        counts: torch.Tensor,
        *,
        smoothing: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.encoder = encoder
        self.batches = batches
        self.counts = counts
        self.prior = token_prior(counts, counts.shape[0], smoothing=smoothing, counts=True).float()
        self.buckets = frequency_buckets(counts)
        self.seed = seed
        self.clean_sentences = clean_sentence_embeddings(encoder, batches)

    def __call__(
        self, layer: TokenNoise, *, privacy: bool = True, nearest_neighbour: bool = True
    ) -> dict[str, Any]:
        """:func:`evaluate_layer` of ``layer`` on the fixed pieces."""
        start = time.perf_counter()
        result = evaluate_layer(
            self.encoder,
            layer,
            self.batches,
            self.prior,
            self.buckets,
            clean_sentences=self.clean_sentences,
            seed=self.seed,
            privacy=privacy,
            nearest_neighbour=nearest_neighbour,
        )
        result["evaluation_seconds"] = time.perf_counter() - start
        return result

    def isotropic_std_for(
        self,
        key: str,
        target: float,
        *,
        low: float = 1e-3,
        high: float = 2.0,
        iterations: int = 10,
    ) -> float:
        """The isotropic std whose utility ``key`` equals ``target`` (bisection in log std).

        With the noise drawn from one seed, the utility falls monotonically as the std grows;
        ten halvings of ``[1e-3, 2]`` in log space give the std to within 1 %.
        """
        for _ in range(iterations):
            middle = math.sqrt(low * high)
            if self(IsotropicNoise(middle), privacy=False)[key] > target:
                low = middle
            else:
                high = middle
        return math.sqrt(low * high)


def compare(
    evaluation: Evaluation,
    layer: TokenNoise,
    *,
    frequency_k: int = 20,
    large_std: float = 2.0,
    small_std: float = 0.02,
) -> dict[str, Any]:
    """The report: ``results`` (row name -> metrics), the baselines' parameters, seconds.

    Rows: ``learned`` (``layer``), ``isotropic_equal_utility`` (isotropic noise bisected to
    the learned layer's sentence cosine) and ``frequency_rule`` (the ``frequency_k`` most
    frequent training tokens at ``large_std``, the rest at ``small_std``).
    """
    start = time.perf_counter()
    results = {"learned": evaluation(layer)}
    std = evaluation.isotropic_std_for("sentence_cosine", results["learned"]["sentence_cosine"])
    results["isotropic_equal_utility"] = evaluation(IsotropicNoise(std))
    rule = FrequencyRuleNoise(evaluation.counts, frequency_k, large_std, small_std)
    results["frequency_rule"] = evaluation(rule)
    return {
        "results": results,
        "baselines": {
            "isotropic_equal_utility": {"std": std},
            "frequency_rule": {"k": frequency_k, "large_std": large_std, "small_std": small_std},
        },
        "seed": evaluation.seed,
        "evaluation_seconds": time.perf_counter() - start,
    }


def report_layers(
    report: dict[str, Any], learned: TokenNoise, counts: torch.Tensor
) -> dict[str, TokenNoise]:
    """The layer of every row of a :func:`compare` report (``learned`` alone without baselines)."""
    layers = {"learned": learned}
    baselines = report.get("baselines", {})
    if "isotropic_equal_utility" in baselines:
        layers["isotropic_equal_utility"] = IsotropicNoise(
            baselines["isotropic_equal_utility"]["std"]
        )
    if "frequency_rule" in baselines:
        rule = baselines["frequency_rule"]
        layers["frequency_rule"] = FrequencyRuleNoise(
            counts, rule["k"], rule["large_std"], rule["small_std"]
        )
    return layers
