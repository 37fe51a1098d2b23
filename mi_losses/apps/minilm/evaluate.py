"""Privacy and utility of an obfuscation on held-out text, against two baselines.

For every method (the learned noise layer, no noise, isotropic Gaussian noise of the learned
layer's mean std, and isotropic Gaussian noise whose std is tuned to the learned layer's utility)
on the validation sequences:

- privacy: the nearest-neighbour token-recovery *failure* rate over the noised tokens, with the
  cosine and the L2 attack against the vocabulary table, and with an attacker who knows the
  layer (L2 against the vocabulary moved by the layer's mean shift, ``x_v + mu(x_v)``; the same
  as the plain L2 attack for the baselines, whose shift is zero); and the mutual information estimate
  ``mutual_information_sub_batch`` at token granularity, in nats per token (``None`` without noise,
  where it is infinite);
- utility: the mean cosine between the clean and the noisy sentence embeddings, and top-1
  retrieval accuracy (the noisy sentence embedding's nearest clean sentence embedding among all
  validation sequences is its own).

The noise is drawn from a fixed seed, so two evaluations of one method agree exactly.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from mi_losses.apps.minilm.attack import recovered_tokens
from mi_losses.apps.minilm.model import MiniLMEncoder
from mi_losses.functional import mutual_information_sub_batch_estimate
from mi_losses.noise import NoisyEmbeddings

NoiseFunction = Callable[[torch.Tensor, torch.Tensor], NoisyEmbeddings]
"""``(clean (B, S, E), noise_mask (B, S)) -> NoisyEmbeddings``, e.g. a ``GaussianNoiseLayer``."""

METHODS = ("learned", "no_noise", "isotropic_equal_std", "isotropic_equal_utility")
METRICS = (
    "nn_failure_rate_cosine",
    "nn_failure_rate_l2",
    "nn_failure_rate_l2_shift_aware",
    "mutual_information_nats_per_token",
    "sentence_cosine",
    "retrieval_top1",
    "noise_std_mean",
)


class NoNoise(nn.Module):
    """The identity "obfuscation": ``y = x``, ``mu = 0``, ``sigma = 0``."""

    def forward(self, embeddings: torch.Tensor, noise_mask: torch.Tensor) -> NoisyEmbeddings:
        zeros = torch.zeros_like(embeddings)
        return NoisyEmbeddings(noisy=embeddings, means=zeros, stds=zeros)


class IsotropicGaussianNoise(nn.Module):
    """``y = x + std * eps`` at the noise mask, one ``std`` for every token and feature.

    Args:
        std: the standard deviation, ``> 0``.
    """

    def __init__(self, std: float) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.std = float(std)

    def forward(self, embeddings: torch.Tensor, noise_mask: torch.Tensor) -> NoisyEmbeddings:
        stds = torch.full_like(embeddings, self.std)
        noisy = embeddings + stds * torch.randn_like(embeddings)
        noisy = torch.where(noise_mask.bool().unsqueeze(-1), noisy, embeddings)
        return NoisyEmbeddings(noisy=noisy, means=torch.zeros_like(embeddings), stds=stds)


Batch = dict[str, torch.Tensor]


@torch.no_grad()
def clean_sentence_embeddings(encoder: MiniLMEncoder, batches: Iterable[Batch]) -> torch.Tensor:
    """Sentence embeddings ``(N, E)`` of the clean sequences, in batch order."""
    return torch.cat(
        [
            encoder.sentence_embedding(
                encoder.embed_tokens(batch["input_ids"]), batch["attention_mask"].bool()
            )
            for batch in batches
        ]
    )


@torch.no_grad()
def evaluate_noise(
    encoder: MiniLMEncoder,
    noise: NoiseFunction,
    batches: Iterable[Batch],
    *,
    clean_sentences: torch.Tensor | None = None,
    seed: int = 0,
    privacy: bool = True,
) -> dict[str, float | None]:
    """Privacy and utility metrics of one obfuscation (see the module docstring).

    Args:
        encoder: the frozen model.
        noise: the obfuscation to evaluate.
        batches: validation batches (dicts of ``input_ids``, ``attention_mask``, ``noise_mask``).
        clean_sentences: precomputed :func:`clean_sentence_embeddings` of ``batches``, if any.
        seed: seed of the noise.
        privacy: compute the attack and the mutual information (``False``: utility only).

    Returns:
        A dict with the keys of ``METRICS`` plus ``tokens_attacked`` and ``sequences``.
    """
    batches = list(batches)
    if clean_sentences is None:
        clean_sentences = clean_sentence_embeddings(encoder, batches)
    table = encoder.word_embedding_table
    noisy_sentences = []
    recovered = {"cosine": 0, "l2": 0, "l2_shift_aware": 0}
    attacked = 0
    mi_sum, mi_count, std_sum, std_count = 0.0, 0, 0.0, 0
    with torch.random.fork_rng(devices=[]):
        if privacy:
            vocabulary = table.unsqueeze(0)
            shifted_table = table + noise(vocabulary, torch.ones(vocabulary.shape[:2])).means[0]
        torch.manual_seed(seed)
        for batch in batches:
            noise_mask = batch["noise_mask"].bool()
            clean = encoder.embed_tokens(batch["input_ids"])
            out = noise(clean, noise_mask)
            noisy_sentences.append(
                encoder.sentence_embedding(out.noisy, batch["attention_mask"].bool())
            )
            std_sum += float(out.stds[noise_mask].sum())
            std_count += int(noise_mask.sum()) * clean.shape[-1]
            if not privacy:
                continue
            ids = batch["input_ids"]
            for metric in ("cosine", "l2"):
                hits, tried = recovered_tokens(out.noisy, ids, noise_mask, table, metric)
                recovered[metric] += hits
            hits, _ = recovered_tokens(out.noisy, ids, noise_mask, shifted_table, "l2")
            recovered["l2_shift_aware"] += hits
            attacked += tried
            noised = bool((out.stds[noise_mask] > 0).all())
            if noised and noise_mask.shape[0] % 2 == 0:
                estimate = mutual_information_sub_batch_estimate(
                    out.means, out.stds, noise_mask, clean, out.noisy, granularity="token"
                )
                count = int(estimate.num_queries)
                mi_sum += float(estimate.value) * count
                mi_count += count
    noisy = F.normalize(torch.cat(noisy_sentences), dim=-1)
    clean = F.normalize(clean_sentences, dim=-1)
    similarity = noisy @ clean.T
    result: dict[str, float | None] = {
        "sentence_cosine": float(similarity.diagonal().mean()),
        "retrieval_top1": float(
            (similarity.argmax(-1) == torch.arange(similarity.shape[0])).float().mean()
        ),
        "noise_std_mean": std_sum / std_count if std_count else 0.0,
        "sequences": int(similarity.shape[0]),
    }
    if privacy:
        result["nn_failure_rate_cosine"] = 1.0 - recovered["cosine"] / attacked
        result["nn_failure_rate_l2"] = 1.0 - recovered["l2"] / attacked
        result["nn_failure_rate_l2_shift_aware"] = 1.0 - recovered["l2_shift_aware"] / attacked
        result["mutual_information_nats_per_token"] = mi_sum / mi_count if mi_count else None
        result["tokens_attacked"] = attacked
    return result


def isotropic_std_for_utility(
    encoder: MiniLMEncoder,
    batches: list[Batch],
    target_cosine: float,
    *,
    clean_sentences: torch.Tensor | None = None,
    low: float = 1e-3,
    high: float = 1.0,
    iterations: int = 10,
    seed: int = 0,
) -> float:
    """The isotropic std whose mean sentence cosine equals ``target_cosine`` (bisection in log std).

    With the noise drawn from one seed, the cosine falls monotonically as the std grows. Ten
    halvings of ``[1e-3, 1]`` in log space give the std to within 0.7 %.
    """
    if clean_sentences is None:
        clean_sentences = clean_sentence_embeddings(encoder, batches)
    for _ in range(iterations):
        middle = math.sqrt(low * high)
        cosine = evaluate_noise(
            encoder,
            IsotropicGaussianNoise(middle),
            batches,
            clean_sentences=clean_sentences,
            seed=seed,
            privacy=False,
        )["sentence_cosine"]
        if cosine > target_cosine:
            low = middle
        else:
            high = middle
    return math.sqrt(low * high)


def evaluate_obfuscation(
    encoder: MiniLMEncoder,
    noise_layer: NoiseFunction,
    batches: Iterable[Batch],
    *,
    seed: int = 0,
    match_utility: bool = True,
) -> dict[str, Any]:
    """Evaluate ``noise_layer`` and the baselines; returns the report (see :func:`format_table`).

    The report has ``results`` (method -> metrics, methods of ``METHODS``), ``isotropic_stds``
    (the two baseline stds) and ``evaluation_seconds``.
    """
    start = time.perf_counter()
    batches = list(batches)
    clean_sentences = clean_sentence_embeddings(encoder, batches)

    def run(noise: NoiseFunction) -> dict[str, float | None]:
        return evaluate_noise(encoder, noise, batches, clean_sentences=clean_sentences, seed=seed)

    results = {"learned": run(noise_layer), "no_noise": run(NoNoise())}
    equal_std = float(results["learned"]["noise_std_mean"] or 0.0)
    stds = {"isotropic_equal_std": equal_std}
    results["isotropic_equal_std"] = run(IsotropicGaussianNoise(max(equal_std, 1e-12)))
    if match_utility:
        target = float(results["learned"]["sentence_cosine"])
        stds["isotropic_equal_utility"] = isotropic_std_for_utility(
            encoder, batches, target, clean_sentences=clean_sentences, seed=seed
        )
        results["isotropic_equal_utility"] = run(
            IsotropicGaussianNoise(stds["isotropic_equal_utility"])
        )
    return {
        "results": results,
        "isotropic_stds": stds,
        "seed": seed,
        "evaluation_seconds": time.perf_counter() - start,
    }


def format_table(report: dict[str, Any]) -> str:
    """The report's results as a Markdown table, one row per method."""
    headers = (
        "method",
        "NN fail (cos)",
        "NN fail (L2)",
        "NN fail (L2, shift-aware)",
        "MI nats/token",
        "sent. cosine",
        "retrieval@1",
        "mean std",
    )
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for method, metrics in report["results"].items():
        cells = [method]
        for key in METRICS:
            value = metrics.get(key)
            if value is None:
                cells.append("inf")
            else:
                cells.append(
                    f"{value:.1f}" if key == "mutual_information_nats_per_token" else f"{value:.4f}"
                )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as indented JSON (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path


class ObfuscationReport(pl.Callback):
    """At the end of ``fit``: evaluate on the validation data, write the JSON report, print the table.

    Expects a LightningModule with ``encoder`` and ``noise_layer`` attributes (like
    ``MiniLMObfuscation``) and a datamodule with ``val_dataloader()``.

    Args:
        report_path: where the JSON report goes.
        match_utility: also evaluate isotropic noise tuned to the learned layer's sentence cosine.
        seed: seed of the evaluation noise.
    """

    def __init__(
        self,
        report_path: str = "outputs/minilm/report.json",
        match_utility: bool = True,
        seed: int = 0,
    ) -> None:
        self.report_path = report_path
        self.match_utility = match_utility
        self.seed = seed
        self.report: dict[str, Any] | None = None
        self._fit_start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fit_seconds = time.perf_counter() - self._fit_start
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        pl_module.eval()
        batches = [
            {key: value.to(pl_module.device) for key, value in batch.items()}
            for batch in datamodule.val_dataloader()
        ]
        report = evaluate_obfuscation(
            pl_module.encoder,
            pl_module.noise_layer,
            batches,
            seed=self.seed,
            match_utility=self.match_utility,
        )
        report["training"] = {
            "hyperparameters": dict(pl_module.hparams),
            "global_step": trainer.global_step,
            "fit_seconds": fit_seconds,
        }
        report["data"] = {
            "train_sequences": len(datamodule.train_sequences),
            "val_sequences": len(datamodule.val_sequences),
            "max_length": datamodule.max_length,
        }
        self.report = report
        path = write_report(report, self.report_path)
        print(f"\nObfuscation report ({path}):\n{format_table(report)}\n")
