"""The report of the main job: the learned layer against isotropic noise and the frequency rule.

Rows (all evaluated by :func:`~mi_losses.apps.minilm.evaluate.evaluate_layer` on the validation
text, one noise seed):

- ``learned``: the trained :class:`~mi_losses.noise.LearnedTokenNoise`;
- ``isotropic_equal_utility``: isotropic noise whose std is bisected until its sentence cosine
  equals the learned layer's;
- ``frequency_rule``: the ``k`` most frequent training tokens at ``large_std``, the rest at
  ``small_std`` (defaults: 20, 2.0, 0.02).

:func:`add_inversion` then judges every row by the learned inversion attack that reads the whole
sequence (:func:`mi_losses.apps.privacy.judge.judge`, on the same noise draw) and adds
``inversion_failure`` and ``strongest_attack_failure`` (the lowest failure of every attacker of
the row) to it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from mi_losses.apps.minilm.evaluate import (
    Batch,
    clean_sentence_embeddings,
    evaluate_layer,
    frequency_buckets,
)
from mi_losses.apps.minilm.model import MiniLMEncoder
from mi_losses.functional import token_prior
from mi_losses.noise import FrequencyRuleNoise, IsotropicNoise, TokenNoise

COLUMNS = (
    ("exact_mi_nats_per_token", "exact MI nats/token", 2),
    ("bayes_attack_failure", "Bayes fail", 3),
    ("bayes_top5_failure", "Bayes top-5 fail", 3),
    ("nn_failure_cosine", "NN fail cos", 3),
    ("nn_failure_l2", "NN fail L2", 3),
    ("nn_failure_l2_shift_aware", "NN fail shift-aware", 3),
    ("inversion_failure", "inversion fail", 3),
    ("strongest_attack_failure", "strongest fail", 3),
    ("fano_floor", "Fano floor", 3),
    ("sub_batch_mi_lower", "sub-batch lower", 1),
    ("sub_batch_mi_upper", "sub-batch upper", 1),
    ("sentence_cosine", "sent. cosine", 3),
    ("retrieval_at_1", "retrieval@1", 3),
    ("noise_std_mean", "mean std", 3),
)


class Evaluation:
    """The fixed pieces of every evaluation: encoder, batches, prior, buckets, clean sentences.

    Args:
        encoder: the frozen model.
        batches: validation batches.
        counts: training token counts ``(V,)``.
        smoothing: pseudo-count added to every token for the attacker's prior.
        seed: seed of the evaluation noise.
    """

    def __init__(
        self,
        encoder: MiniLMEncoder,
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
    """The report: ``results`` (row name -> metrics), the baselines' parameters, seconds."""
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


ROW_ATTACKS = (
    "nn_failure_cosine",
    "nn_failure_l2",
    "nn_failure_l2_shift_aware",
    "bayes_attack_failure",
    "inversion_failure",
)
"""The failures of a report row's attackers; ``strongest_attack_failure`` is their minimum."""


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


def add_inversion(
    report: dict[str, Any],
    evaluation: Evaluation,
    layers: dict[str, TokenNoise],
    datamodule: Any,
    settings: Any,
) -> None:
    """Add the learned inversion attack and the strongest attack to every row of ``report``.

    Each row's layer is judged by :func:`mi_losses.apps.privacy.judge.judge` on the noise draw
    of the report (same seed, same batches; checked: the Bayes failure and the retrieval must
    agree with the row's), the attack trained on ``datamodule.train_sequences``. Rows gain
    ``inversion_failure``, ``inversion_top5_failure``, ``inversion_epochs``,
    ``inversion_stopped_early`` (``False``: the epoch cap ended training, so the failure is an
    upper bound on a converged attack's) and ``strongest_attack_failure`` (the minimum over
    :data:`ROW_ATTACKS`); ``report["inversion_settings"]`` records ``settings``.

    Args:
        report: a :func:`compare` report (or one with the ``learned`` row only).
        evaluation: the evaluation that produced it.
        layers: the layer of every row (:func:`report_layers`).
        datamodule: has ``train_sequences`` and ``val_sequences`` (the validation sequences of
            ``evaluation.batches``, in order).
        settings: a :class:`~mi_losses.apps.privacy.judge.InversionSettings`.
    """
    from dataclasses import asdict

    from mi_losses.apps.privacy.channels import GaussianTokenChannel
    from mi_losses.apps.privacy.data import StudyData
    from mi_losses.apps.privacy.judge import judge

    start = time.perf_counter()
    table = evaluation.encoder.word_embedding_table.detach()
    data = StudyData(
        datamodule.train_sequences,
        datamodule.val_sequences,
        table,
        evaluation.counts,
        evaluation.clean_sentences,
    )
    batch_size = int(evaluation.batches[0]["input_ids"].shape[0])
    for name, layer in layers.items():
        row = report["results"][name]
        channel = GaussianTokenChannel(layer, table, evaluation.prior, data.candidates)
        point = judge(
            channel,
            evaluation.encoder,
            data,
            layer=name,
            objective="report",
            parameter="",
            value=0.0,
            seed=evaluation.seed,
            eval_seed=evaluation.seed,
            inversion=settings,
            batch_size=batch_size,
        )
        for key in ("bayes_attack_failure", "retrieval_at_1"):
            if not math.isclose(point[key], row[key], abs_tol=1e-9):
                raise RuntimeError(
                    f"the inversion attack of row {name!r} saw another noise draw: {key} "
                    f"{point[key]} there, {row[key]} in the report"
                )
        for key in ("failure", "top5_failure", "epochs", "stopped_early", "skipped"):
            row[f"inversion_{key}"] = point.get(f"inversion_{key}")
        row["strongest_attack_failure"] = min(
            row[key] for key in ROW_ATTACKS if row.get(key) is not None
        )
    report["inversion_settings"] = asdict(settings)
    report["inversion_seconds"] = time.perf_counter() - start


def _cell(value: Any, digits: int) -> str:
    """``value`` with ``digits`` decimals; a value that rounds to zero prints ``0``, never ``-0``."""
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_table(report: dict[str, Any]) -> str:
    """The report's rows as a Markdown table, then the per-bucket table."""
    headers = ["method", *(title for _, title, _ in COLUMNS)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for method, metrics in report["results"].items():
        cells = [method, *(_cell(metrics.get(key), digits) for key, _, digits in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| method | bucket | token share | self-info nats | exact MI nats | hidden | Bayes fail |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, metrics in report["results"].items():
        for bucket, values in metrics.get("buckets", {}).items():
            lines.append(
                f"| {method} | {bucket} | {_cell(values['token_share'], 3)} | "
                f"{_cell(values['self_information_nats'], 2)} | "
                f"{_cell(values['exact_mi_nats_per_token'], 2)} | "
                f"{_cell(values['hidden_fraction'], 3)} | {_cell(values['bayes_attack_failure'], 3)} |"
            )
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as indented JSON (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def finish_report(
    report: dict[str, Any],
    hyperparameters: dict[str, Any],
    trainer: pl.Trainer,
    datamodule: Any,
    fit_seconds: float,
    smoothing: float,
    path: str | Path,
) -> Path:
    """Add the training and data sections to ``report``, write it and print its tables."""
    report["training"] = {
        "hyperparameters": hyperparameters,
        "global_step": trainer.global_step,
        "fit_seconds": fit_seconds,
    }
    report["data"] = {
        "train_sequences": len(datamodule.train_sequences),
        "val_sequences": len(datamodule.val_sequences),
        "max_length": datamodule.max_length,
        "prior_smoothing": smoothing,
    }
    written = write_report(report, path)
    print(f"\nObfuscation report ({written}):\n{format_table(report)}\n")
    return written


class ObfuscationReport(pl.Callback):
    """At the end of ``fit``: evaluate on the validation data, write the JSON report, print it.

    Expects a LightningModule with ``encoder`` and ``noise_layer`` attributes (like
    ``MiniLMObfuscation``) and a datamodule with ``val_dataloader()`` and
    ``train_token_counts(V)``.

    Args:
        report_path: where the JSON report goes.
        seed: seed of the evaluation noise.
        smoothing: pseudo-count of the attacker's prior.
        frequency_k: tokens at the large std in the frequency-rule baseline.
        inversion_max_epochs: epoch cap of the learned inversion attack run on every row
            (:func:`add_inversion`); ``0`` leaves it out.
        inversion_patience: validation runs without a fall before the attack stops.
        inversion_val_check_interval: the attack's training steps between validation runs,
            counted within an epoch (the MiniLM text's epochs of 39 steps validate once).
        inversion_max_steps: step cap of the attack (``-1``: none; for quick tests).
    """

    def __init__(
        self,
        report_path: str = "outputs/minilm/report.json",
        seed: int = 0,
        smoothing: float = 0.5,
        frequency_k: int = 20,
        inversion_max_epochs: int = 12,
        inversion_patience: int = 3,
        inversion_val_check_interval: int = 20,
        inversion_max_steps: int = -1,
    ) -> None:
        self.report_path = report_path
        self.seed = seed
        self.smoothing = smoothing
        self.frequency_k = frequency_k
        self.inversion_max_epochs = inversion_max_epochs
        self.inversion_patience = inversion_patience
        self.inversion_val_check_interval = inversion_val_check_interval
        self.inversion_max_steps = inversion_max_steps
        self.report: dict[str, Any] | None = None
        self._fit_start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def add_inversion(
        self,
        report: dict[str, Any],
        evaluation: Evaluation,
        learned: TokenNoise,
        datamodule: Any,
    ) -> None:
        """:func:`add_inversion` on every row, unless ``inversion_max_epochs`` is 0."""
        if self.inversion_max_epochs <= 0:
            return
        from mi_losses.apps.privacy.judge import InversionSettings

        settings = InversionSettings(
            max_epochs=self.inversion_max_epochs,
            patience=self.inversion_patience,
            val_check_interval=self.inversion_val_check_interval,
            max_steps=self.inversion_max_steps,
        )
        layers = report_layers(report, learned, evaluation.counts)
        add_inversion(report, evaluation, layers, datamodule, settings)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fit_seconds = time.perf_counter() - self._fit_start
        if not trainer.is_global_zero:
            return
        datamodule: Any = trainer.datamodule  # type: ignore[attr-defined]
        pl_module.eval()
        module: Any = pl_module
        encoder = module.encoder
        batches = [
            {key: value.to(pl_module.device) for key, value in batch.items()}
            for batch in datamodule.val_dataloader()
        ]
        counts = datamodule.train_token_counts(encoder.word_embedding_table.shape[0])
        evaluation = Evaluation(encoder, batches, counts, smoothing=self.smoothing, seed=self.seed)
        report = compare(evaluation, module.noise_layer, frequency_k=self.frequency_k)
        self.add_inversion(report, evaluation, module.noise_layer, datamodule)
        self.report = report
        hyperparameters = dict(pl_module.hparams)
        finish_report(
            report,
            hyperparameters,
            trainer,
            datamodule,
            fit_seconds,
            self.smoothing,
            self.report_path,
        )
