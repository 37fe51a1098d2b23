"""The validation report of ``mi-losses-hf``: the case study's evaluation, for any model.

For a context-free layer it is the MiniLM report (:func:`mi_losses.apps.minilm.report.compare`:
the learned layer against isotropic noise of equal sentence cosine and the frequency rule, each
judged by the known-prior MI ``vocabulary_mutual_information``, the Bayes attack
``bayes_token_attack``, the nearest-neighbour attacks, Fano's floor and the sub-batch bounds).
For a layer that reads context, those need a known channel per token and do not apply; the
report has the nearest-neighbour attacks, the sub-batch bounds and the utility.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytorch_lightning as pl
import torch

from mi_losses.apps.minilm.evaluate import Batch, _mutual_information_bounds, _utility
from mi_losses.apps.minilm.report import (
    Evaluation,
    ObfuscationReport,
    compare,
    finish_report,
)
from mi_losses.attacks import nearest_token_ids
from mi_losses.functional import mutual_information_sub_batch_estimate
from mi_losses.huggingface import NoisyInputEmbeddingsModel
from mi_losses.losses.distillation import mean_pool


class SentenceEncoder:
    """The wrapped model in the case study's terms: word embeddings in, mean-pooled states out.

    ``sentence_embedding`` is the mean over the attended positions of the last hidden state
    (for a language-model head, the last of ``hidden_states``).
    """

    def __init__(self, wrapper: NoisyInputEmbeddingsModel) -> None:
        self.wrapper = wrapper

    @property
    def word_embedding_table(self) -> torch.Tensor:
        return self.wrapper.embedding_table

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.wrapper.embed(input_ids)

    def sentence_embedding(
        self, word_embeddings: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        output = self.wrapper.run(word_embeddings, attention_mask, output_hidden_states=True)
        hidden = getattr(output, "last_hidden_state", None)
        hidden = output.hidden_states[-1] if hidden is None else hidden
        return mean_pool(hidden, attention_mask)


@torch.no_grad()
def evaluate_context_layer(
    evaluation: Evaluation, wrapper: NoisyInputEmbeddingsModel
) -> dict[str, Any]:
    """Utility, nearest-neighbour attacks and sub-batch bounds of a layer that reads context."""
    table = wrapper.embedding_table.detach()
    bounds = _mutual_information_bounds()
    sentences, noisy_tokens, token_ids, stds = [], [], [], []
    upper_sum, lower_sum, count = 0.0, 0.0, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(evaluation.seed)
        for batch in evaluation.batches:
            mask, attention = batch["noise_mask"].bool(), batch["attention_mask"].bool()
            clean = wrapper.embed(batch["input_ids"])
            out = wrapper.add_noise(clean, mask, attention)
            sentences.append(evaluation.encoder.sentence_embedding(out.noisy, attention))
            noisy_tokens.append(out.noisy[mask])
            token_ids.append(batch["input_ids"][mask])
            stds.append(out.stds[mask])
            if mask.shape[0] % 2 == 0:
                arguments = (out.means, out.stds, mask, clean, out.noisy)
                estimate = mutual_information_sub_batch_estimate(*arguments, granularity="token")
                queries = int(estimate.num_queries)
                upper_sum += float(estimate.value) * queries
                if bounds is not None:
                    lower_sum += float(bounds(*arguments, granularity="token").lower) * queries
                count += queries
    result: dict[str, Any] = _utility(torch.cat(sentences), evaluation.clean_sentences)
    noisy, ids = torch.cat(noisy_tokens), torch.cat(token_ids)
    result["sequences"] = int(evaluation.clean_sentences.shape[0])
    result["tokens_attacked"] = int(ids.shape[0])
    result["noise_std_mean"] = float(torch.cat(stds).mean())
    for metric in ("cosine", "l2"):
        found = nearest_token_ids(noisy, table, metric)
        result[f"nn_failure_{metric}"] = 1.0 - float((found == ids).float().mean())
    result["sub_batch_mi_upper"] = upper_sum / count if count else None
    result["sub_batch_mi_lower"] = lower_sum / count if count and bounds else None
    return result


def _plain(value: Any) -> Any:
    """``value`` if JSON can write it, else its ``repr`` (hyperparameters may hold modules)."""
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


class HFObfuscationReport(ObfuscationReport):
    """At the end of ``fit``: evaluate the noise layer on the validation text, write and print.

    Expects :class:`~mi_losses.apps.hf.task.HFObfuscation` and
    :class:`~mi_losses.apps.hf.data.HFTextDataModule` (or anything with their attributes).

    Args:
        report_path: where the JSON report goes.
        seed: seed of the evaluation noise.
        smoothing: pseudo-count of the attacker's prior.
        frequency_k: tokens at the large std in the frequency-rule baseline.
        baselines: also evaluate the isotropic and frequency-rule baselines (context-free
            layers only; ``False``: the learned layer alone).
        inversion_max_epochs: epoch cap of the learned inversion attack run on every row of a
            context-free layer (:func:`~mi_losses.apps.minilm.report.add_inversion`); ``0``
            leaves it out. A layer that reads context gets no inversion column.
        inversion_patience: validation runs without a fall before the attack stops.
        inversion_val_check_interval: the attack's training steps between validation runs,
            counted within an epoch (the MiniLM text's epochs of 39 steps validate once).
        inversion_max_steps: step cap of the attack (``-1``: none; for quick tests).
    """

    def __init__(
        self,
        report_path: str = "outputs/hf/report.json",
        seed: int = 0,
        smoothing: float = 0.5,
        frequency_k: int = 20,
        baselines: bool = True,
        inversion_max_epochs: int = 12,
        inversion_patience: int = 3,
        inversion_val_check_interval: int = 20,
        inversion_max_steps: int = -1,
    ) -> None:
        super().__init__(
            report_path,
            seed,
            smoothing,
            frequency_k,
            inversion_max_epochs,
            inversion_patience,
            inversion_val_check_interval,
            inversion_max_steps,
        )
        self.baselines = baselines

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fit_seconds = time.perf_counter() - self._fit_start
        if not trainer.is_global_zero:
            return
        datamodule: Any = trainer.datamodule  # type: ignore[attr-defined]
        module: Any = pl_module
        pl_module.eval()
        encoder = SentenceEncoder(module.wrapper)
        batches: list[Batch] = [
            {key: value.to(pl_module.device) for key, value in batch.items()}
            for batch in datamodule.val_dataloader()
        ]
        counts = datamodule.train_token_counts(encoder.word_embedding_table.shape[0])
        evaluation = Evaluation(
            encoder,  # type: ignore[arg-type]
            batches,
            counts,
            smoothing=self.smoothing,
            seed=self.seed,
        )
        layer = module.token_noise()
        report: dict[str, Any]
        if layer is not None and self.baselines:
            report = compare(evaluation, layer, frequency_k=self.frequency_k)
        else:
            start = time.perf_counter()
            learned = (
                evaluation(layer)
                if layer is not None
                else evaluate_context_layer(evaluation, module.wrapper)
            )
            report = {
                "results": {"learned": learned},
                "seed": self.seed,
                "evaluation_seconds": time.perf_counter() - start,
            }
        if layer is not None:
            self.add_inversion(report, evaluation, layer, datamodule)
        report["context_free"] = layer is not None
        self.report = report
        hyperparameters = {k: _plain(v) for k, v in dict(pl_module.hparams).items()}
        finish_report(
            report,
            hyperparameters,
            trainer,
            datamodule,
            fit_seconds,
            self.smoothing,
            self.report_path,
        )
