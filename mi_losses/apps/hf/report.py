"""The validation report of ``mi-losses-hf``: every row judged by every attacker that applies.

For a context-free layer: :func:`mi_losses.evaluation.compare` (the learned layer against
isotropic noise of equal sentence cosine and the frequency rule, each judged by the known-prior
MI, the Bayes attack, the nearest-neighbour attacks, Fano's floor and the sub-batch bounds), then
:func:`add_inversion` (the learned inversion attack that reads the whole sequence, on the same
noise draw, and the strongest attack of each row). For a layer that reads context, those need a
known channel per token and do not apply: :func:`mi_losses.evaluation.evaluate_context_layer`
(nearest-neighbour attacks, sub-batch bounds, utility). For a learned discrete channel
(:class:`~mi_losses.mechanisms.LearnedSubstitution`): :func:`substitution_report`, its exact
channel judged as the privacy frontier judges it (:func:`mi_losses.evaluation.judge`: nearest
neighbour, the Bayes attacker over the released token, the exact MI, the inversion attack).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from mi_losses.evaluation import (
    ROW_ATTACKS,
    Batch,
    Evaluation,
    GaussianTokenChannel,
    InversionSettings,
    ReleaseChannel,
    SentenceEncoder,
    StudyChannel,
    StudyData,
    compare,
    evaluate_context_layer,
    format_terminal,
    judge,
    report_layers,
)
from mi_losses.mechanisms import LearnedSubstitution
from mi_losses.noise import FrequencyRuleNoise, TokenNoise


def study_data(evaluation: Evaluation, datamodule: Any) -> StudyData:
    """The :class:`~mi_losses.evaluation.StudyData` of a report: the datamodule's training and
    validation sequences, the evaluation's table, counts and clean sentences."""
    return StudyData(
        datamodule.train_sequences,
        datamodule.val_sequences,
        evaluation.encoder.word_embedding_table.detach(),
        evaluation.counts,
        evaluation.clean_sentences,
    )


def judge_row(
    name: str,
    channel: StudyChannel,
    evaluation: Evaluation,
    data: StudyData,
    inversion: InversionSettings | None,
) -> dict[str, Any]:
    """:func:`mi_losses.evaluation.judge` of one report row on the report's draw (its seed, its
    batch size)."""
    return judge(
        channel,
        evaluation.encoder,
        data,
        layer=name,
        objective="report",
        parameter="",
        value=0.0,
        seed=evaluation.seed,
        eval_seed=evaluation.seed,
        inversion=inversion,
        batch_size=int(evaluation.batches[0]["input_ids"].shape[0]),
    )


def add_inversion(
    report: dict[str, Any],
    evaluation: Evaluation,
    layers: dict[str, TokenNoise],
    datamodule: Any,
    settings: Any,
) -> None:
    """Add the learned inversion attack and the strongest attack to every row of ``report``.

    Each row's layer is judged by :func:`mi_losses.evaluation.judge.judge` on the noise draw
    of the report (same seed, same batches; checked: the Bayes failure and the retrieval must
    agree with the row's), the attack trained on ``datamodule.train_sequences``. Rows gain
    ``inversion_failure``, ``inversion_top5_failure``, ``inversion_epochs``,
    ``inversion_stopped_early`` (``False``: the epoch cap ended training, so the failure is an
    upper bound on a converged attack's) and ``strongest_attack_failure`` (the minimum over
    :data:`~mi_losses.evaluation.ROW_ATTACKS`); ``report["inversion_settings"]`` records
    ``settings`` (a :class:`~mi_losses.evaluation.judge.InversionSettings`).
    """
    start = time.perf_counter()
    table = evaluation.encoder.word_embedding_table.detach()
    data = study_data(evaluation, datamodule)
    for name, layer in layers.items():
        row = report["results"][name]
        channel = GaussianTokenChannel(layer, table, evaluation.prior, data.candidates)
        point = judge_row(name, channel, evaluation, data, settings)
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


def substitution_report(
    evaluation: Evaluation,
    layer: LearnedSubstitution,
    datamodule: Any,
    inversion: InversionSettings | None,
    *,
    baselines: bool = True,
    frequency_k: int = 20,
) -> dict[str, Any]:
    """The report of a learned discrete channel: every row judged by
    :func:`mi_losses.evaluation.judge` on one shared draw of the validation text.

    Rows: ``learned`` (the layer's exact channel, a
    :class:`~mi_losses.evaluation.ReleaseChannel` ``"substitution"`` over the training text's
    tokens, as the privacy frontier judges it; plus ``channel_mi_nats_per_token``, its exact MI
    under the attacker's prior) and, with ``baselines``, ``santext`` (SanText at the layer's
    ``epsilon``: the channel it started from) and ``frequency_rule`` (the Gaussian rule of
    :func:`~mi_losses.evaluation.compare`). ``inversion=None`` leaves the inversion attack out.
    """
    start = time.perf_counter()
    data = study_data(evaluation, datamodule)
    table, prior, candidates = data.table, evaluation.prior, data.candidates
    layer = layer.eval()
    log_channel = layer.dense_log_probabilities(outputs=candidates.to(layer.candidates.device))
    channels: dict[str, StudyChannel] = {
        "learned": ReleaseChannel(
            "substitution", layer.epsilon, table, prior, candidates, log_channel=log_channel
        )
    }
    if baselines:
        channels["santext"] = ReleaseChannel("santext", layer.epsilon, table, prior, candidates)
        rule = FrequencyRuleNoise(evaluation.counts, frequency_k, 2.0, 0.02)
        channels["frequency_rule"] = GaussianTokenChannel(rule, table, prior, candidates)
    results = {
        name: judge_row(name, channel, evaluation, data, inversion)
        for name, channel in channels.items()
    }
    with torch.no_grad():
        mi = layer.mutual_information(prior.to(layer.logits.device))
    results["learned"]["channel_mi_nats_per_token"] = float(mi)
    report: dict[str, Any] = {"results": results, "seed": evaluation.seed}
    if baselines:
        report["baselines"] = {
            "santext": {"epsilon": layer.epsilon},
            "frequency_rule": {"k": frequency_k, "large_std": 2.0, "small_std": 0.02},
        }
    report["substitution"] = {
        "num_candidates": layer.num_candidates,
        "epsilon": layer.epsilon,
        "temperature": layer.temperature,
        "output_vocabulary": "training-text tokens",
    }
    if inversion is not None:
        report["inversion_settings"] = asdict(inversion)
    report["evaluation_seconds"] = time.perf_counter() - start
    return report


def _plain(value: Any) -> Any:
    """``value`` if JSON can write it, else its ``repr`` (hyperparameters may hold modules)."""
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as indented JSON (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


class HFObfuscationReport(pl.Callback):
    """At the end of ``fit``: evaluate the noise layer on the validation text, write and print.

    Expects :class:`~mi_losses.apps.hf.task.HFObfuscation` and
    :class:`~mi_losses.apps.hf.data.HFTextDataModule` (or anything with their attributes).
    The JSON has every number; the terminal gets :func:`~mi_losses.evaluation.format_terminal`.

    Args:
        report_path: where the JSON report goes.
        seed: seed of the evaluation noise.
        smoothing: pseudo-count of the attacker's prior.
        frequency_k: tokens at the large std in the frequency-rule baseline.
        baselines: also evaluate the isotropic and frequency-rule baselines (context-free
            layers only; ``False``: the learned layer alone).
        inversion_max_epochs: epoch cap of the learned inversion attack run on every row of a
            context-free layer (:func:`add_inversion`); ``0`` leaves it out. A layer that reads
            context gets no inversion column.
        inversion_patience: validation runs without a fall before the attack stops.
        inversion_val_check_interval: the attack's training steps between validation runs,
            counted within an epoch (the MiniLM text's epochs of 39 steps validate once).
        inversion_max_steps: step cap of the attack (``-1``: none; for quick tests).
        layer_directory: the trained noise layer is saved (``save_pretrained``: ``config.json``
            and ``model.safetensors``) into this folder next to the report; ``""``: not saved.
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
        layer_directory: str = "noise_layer",
    ) -> None:
        self.report_path = report_path
        self.layer_directory = layer_directory
        self.seed = seed
        self.smoothing = smoothing
        self.frequency_k = frequency_k
        self.baselines = baselines
        self.inversion_max_epochs = inversion_max_epochs
        self.inversion_patience = inversion_patience
        self.inversion_val_check_interval = inversion_val_check_interval
        self.inversion_max_steps = inversion_max_steps
        self.report: dict[str, Any] | None = None
        self._fit_start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def inversion_settings(self) -> InversionSettings | None:
        """The inversion attack's settings, or ``None`` when ``inversion_max_epochs`` is 0."""
        if self.inversion_max_epochs <= 0:
            return None
        return InversionSettings(
            max_epochs=self.inversion_max_epochs,
            patience=self.inversion_patience,
            val_check_interval=self.inversion_val_check_interval,
            max_steps=self.inversion_max_steps,
        )

    def add_inversion(
        self,
        report: dict[str, Any],
        evaluation: Evaluation,
        learned: TokenNoise,
        datamodule: Any,
    ) -> None:
        """:func:`add_inversion` on every row, unless ``inversion_max_epochs`` is 0."""
        settings = self.inversion_settings()
        if settings is None:
            return
        layers = report_layers(report, learned, evaluation.counts)
        add_inversion(report, evaluation, layers, datamodule, settings)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fit_seconds = time.perf_counter() - self._fit_start
        if not trainer.is_global_zero:
            return
        datamodule: Any = trainer.datamodule  # type: ignore[attr-defined]
        module: Any = pl_module
        pl_module.eval()
        encoder = SentenceEncoder(module.wrapper.model)
        batches: list[Batch] = [
            {key: value.to(pl_module.device) for key, value in batch.items()}
            for batch in datamodule.val_dataloader()
        ]
        table = encoder.word_embedding_table
        counts = datamodule.train_token_counts(table.shape[0]).to(table.device)
        evaluation = Evaluation(encoder, batches, counts, smoothing=self.smoothing, seed=self.seed)
        layer = module.token_noise()
        report: dict[str, Any]
        if isinstance(module.noise_layer, LearnedSubstitution):
            report = substitution_report(
                evaluation,
                module.noise_layer,
                datamodule,
                self.inversion_settings(),
                baselines=self.baselines,
                frequency_k=self.frequency_k,
            )
        elif layer is not None and self.baselines:
            report = compare(evaluation, layer, frequency_k=self.frequency_k)
        else:
            start = time.perf_counter()
            learned = (
                evaluation(layer)
                if layer is not None
                else evaluate_context_layer(
                    encoder,
                    module.wrapper,
                    batches,
                    clean_sentences=evaluation.clean_sentences,
                    seed=self.seed,
                )
            )
            report = {
                "results": {"learned": learned},
                "seed": self.seed,
                "evaluation_seconds": time.perf_counter() - start,
            }
        if layer is not None:
            self.add_inversion(report, evaluation, layer, datamodule)
        report["context_free"] = layer is not None or "substitution" in report
        report["training"] = {
            "hyperparameters": {k: _plain(v) for k, v in dict(pl_module.hparams).items()},
            "global_step": trainer.global_step,
            "fit_seconds": fit_seconds,
        }
        report["data"] = {
            "train_sequences": len(datamodule.train_sequences),
            "val_sequences": len(datamodule.val_sequences),
            "max_length": datamodule.max_length,
            "prior_smoothing": self.smoothing,
        }
        layer_dir = self.save_layer(module.noise_layer)
        if layer_dir is not None:
            report["noise_layer"] = str(layer_dir)
        self.report = report
        written = write_report(report, self.report_path)
        print(f"\nObfuscation report (every column in {written}):\n{format_terminal(report)}")
        if layer_dir is not None:
            print(f"Trained noise layer: {layer_dir} (load it with from_pretrained)")
        print()

    def save_layer(self, layer: Any) -> Path | None:
        """Save the trained layer into ``noise_layer/`` next to the report, if it can be saved."""
        if not self.layer_directory or not hasattr(layer, "save_pretrained"):
            return None
        return Path(layer.save_pretrained(Path(self.report_path).parent / self.layer_directory))
