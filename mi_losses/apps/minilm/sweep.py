"""The privacy-utility frontier: an ``alpha`` sweep per objective against the two baselines.

For each objective (``vocabulary``: exact known-prior MI; ``sub_batch``: the reference API's
estimate) a :class:`~mi_losses.noise.LearnedTokenNoise` layer is trained per
``alpha`` from one seed; isotropic noise is evaluated over a grid of stds and the frequency rule
over a grid of ``k``. Every point is evaluated by
:func:`~mi_losses.apps.minilm.evaluate.evaluate_layer` on the validation text. Writes
``frontier.json`` (a list of points: ``objective``, ``alpha`` (for a baseline, its parameter:
the std or ``k``), ``retrieval_at_1``, ``sentence_cosine``, ``bayes_attack_failure``,
``exact_mi_nats_per_token`` and every other metric) and ``privacy_frontier.png``.

    PYTHONPATH=. python -m mi_losses.apps.minilm.sweep --num_threads 1

An empty list skips a grid, so the objectives can run in separate processes whose outputs
:func:`combine` joins.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from mi_losses.apps.minilm.data import PydocTextDataModule
from mi_losses.apps.minilm.model import MiniLMEncoder
from mi_losses.apps.minilm.report import Evaluation
from mi_losses.apps.minilm.task import MiniLMObfuscation, Objective, Utility
from mi_losses.callbacks import ComponentLossLogger
from mi_losses.noise import FrequencyRuleNoise, IsotropicNoise

REQUIRED_KEYS = (
    "objective",
    "alpha",
    "retrieval_at_1",
    "sentence_cosine",
    "bayes_attack_failure",
    "exact_mi_nats_per_token",
)
"""Keys every point of ``frontier.json`` has."""

STYLES = {
    "vocabulary": ("tab:blue", "s", "learned, exact vocabulary MI"),
    "sub_batch": ("tab:orange", "^", "learned, sub-batch MI"),
    "frequency_rule": ("tab:green", "D", "frequency rule (k most frequent at std 2)"),
    "isotropic": ("tab:gray", "o", "isotropic noise"),
}


def train_layer(
    datamodule: PydocTextDataModule,
    objective: Objective,
    alpha: float,
    *,
    max_steps: int,
    seed: int,
    log_dir: Path,
    **model_arguments: Any,
) -> tuple[MiniLMObfuscation, float]:
    """Train one layer; returns the task and the seconds ``fit`` took."""
    pl.seed_everything(seed, verbose=False)
    task = MiniLMObfuscation(alpha=alpha, objective=objective, **model_arguments)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        logger=CSVLogger(log_dir, name=f"{objective}_alpha_{alpha:g}"),
        callbacks=[ComponentLossLogger(module_attribute="mi_loss", prefix="mi")],
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    task.eval()
    return task, time.perf_counter() - start


def _point(objective: str, alpha: float, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"objective": objective, "alpha": alpha, **extra, **metrics}


def _save(points: list[dict[str, Any]], output: Path) -> None:
    """Write the points so far (after every point: an interrupted sweep keeps what it measured)."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "frontier.json").write_text(json.dumps(points, indent=2) + "\n")


def sweep(
    vocabulary_alphas: list[float] | None = None,
    sub_batch_alphas: list[float] | None = None,
    isotropic_stds: list[float] | None = None,
    frequency_ks: list[int] | None = None,
    max_steps: int = 150,
    output_dir: str = "outputs/minilm_sweep",
    seed: int = 0,
    learning_rate: float = 1e-2,
    mean_scale: float = 0.05,
    max_std: float = 4.0,
    init_std: float = 0.15,
    utility: Utility = "cosine",
    num_threads: int | None = None,
    num_val: int = 192,
    warm_start_k: int = 20,
    nearest_neighbour: bool = False,
) -> list[dict[str, Any]]:
    """Train and evaluate every point; write ``frontier.json`` and ``privacy_frontier.png``.

    Args:
        vocabulary_alphas: ``alpha`` values of the exact-vocabulary-MI objective.
        sub_batch_alphas: ``alpha`` values of the sub-batch objective.
        isotropic_stds: stds of the isotropic baseline.
        frequency_ks: ``k`` values of the frequency-rule baseline (std 2.0 for the ``k`` most
            frequent training tokens, 0.02 for the rest).
        max_steps: training steps per learned layer.
        output_dir: folder of the outputs and the CSV logs.
        seed: seed of the data split, the training and the evaluation noise.
        learning_rate: Adam learning rate of the noise layers.
        mean_scale: bound of the learned mean shift per coordinate (``0``: sigma only).
        max_std: upper bound of the learned ``sigma``.
        init_std: the learned ``sigma`` at initialisation.
        utility: the utility term of the learned layers (``"cosine"`` or ``"retrieval"``).
        num_threads: torch intra-op CPU threads; ``None`` keeps torch's default.
        num_val: validation sequences evaluated (the retrieval gallery).
        warm_start_k: the learned layers start from the frequency rule with this ``k``
            (``0``: from ``init_std`` everywhere).
        nearest_neighbour: also run the nearest-neighbour attacks on every point (slower).

    Returns:
        The points, as written to ``frontier.json``.
    """
    start = time.perf_counter()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    grids: dict[Objective, list[float]] = {
        "vocabulary": [0.02, 0.05, 0.1, 0.2] if vocabulary_alphas is None else vocabulary_alphas,
        "sub_batch": [0.001, 0.003, 0.01, 0.03] if sub_batch_alphas is None else sub_batch_alphas,
    }
    isotropic_stds = [0.02, 0.05, 0.1, 0.2, 0.3] if isotropic_stds is None else isotropic_stds
    frequency_ks = [10, 20, 40, 80] if frequency_ks is None else frequency_ks
    output = Path(output_dir)
    datamodule = PydocTextDataModule(seed=seed, num_val=num_val)
    datamodule.setup()
    batches = list(datamodule.val_dataloader())
    points: list[dict[str, Any]] = []
    evaluation: Evaluation | None = None
    model_arguments = {
        "learning_rate": learning_rate,
        "mean_scale": mean_scale,
        "max_std": max_std,
        "init_std": init_std,
        "utility": utility,
        "warm_start_k": warm_start_k,
    }
    for objective, alphas in grids.items():
        for alpha in alphas:
            task, fit_seconds = train_layer(
                datamodule,
                objective,
                alpha,
                max_steps=max_steps,
                seed=seed,
                log_dir=output,
                **model_arguments,
            )
            if evaluation is None:
                counts = datamodule.train_token_counts(task.encoder.word_embedding_table.shape[0])
                evaluation = Evaluation(task.encoder, batches, counts, seed=seed)
            metrics = evaluation(task.noise_layer, nearest_neighbour=nearest_neighbour)
            points.append(_point(objective, alpha, metrics, fit_seconds=fit_seconds))
            _save(points, output)
            print(_summary(points[-1]), flush=True)
    if evaluation is None:
        encoder = MiniLMEncoder()
        counts = datamodule.train_token_counts(encoder.word_embedding_table.shape[0])
        evaluation = Evaluation(encoder, batches, counts, seed=seed)
    for std in isotropic_stds:
        isotropic = evaluation(IsotropicNoise(std), nearest_neighbour=nearest_neighbour)
        points.append(_point("isotropic", std, isotropic, parameter="std"))
        _save(points, output)
        print(_summary(points[-1]), flush=True)
    for k in frequency_ks:
        rule = FrequencyRuleNoise(evaluation.counts, k)
        metrics = evaluation(rule, nearest_neighbour=nearest_neighbour)
        points.append(_point("frequency_rule", k, metrics, parameter="k"))
        _save(points, output)
        print(_summary(points[-1]), flush=True)
    _save(points, output)
    figure = plot(points, output / "privacy_frontier.png")
    print(format_frontier(points))
    print(f"wrote {output / 'frontier.json'} and {figure} in {time.perf_counter() - start:.0f} s")
    return points


def combine(inputs: list[str], output_dir: str) -> list[dict[str, Any]]:
    """Concatenate the ``frontier.json`` of several sweeps (e.g. one process per objective).

    Writes ``frontier.json`` and ``privacy_frontier.png`` to ``output_dir`` and prints the table.
    """
    points = [point for name in inputs for point in json.loads(Path(name).read_text())]
    order = list(STYLES)
    points.sort(key=lambda p: (order.index(p["objective"]), p["alpha"]))
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "frontier.json").write_text(json.dumps(points, indent=2) + "\n")
    plot(points, output / "privacy_frontier.png")
    print(format_frontier(points))
    return points


def _summary(point: dict[str, Any]) -> str:
    return (
        f"{point['objective']} {point['alpha']:g}: retrieval@1 {point['retrieval_at_1']:.3f} "
        f"cosine {point['sentence_cosine']:.3f} Bayes fail {point['bayes_attack_failure']:.3f} "
        f"exact MI {point['exact_mi_nats_per_token']:.2f}"
    )


def format_frontier(points: list[dict[str, Any]]) -> str:
    """One Markdown row per point."""
    lines = [
        "| objective | alpha / parameter | retrieval@1 | sent. cosine | Bayes fail | Bayes top-5 "
        "fail | exact MI nats/token | Fano floor | mean std |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        parameter = f"{p.get('parameter', 'alpha')} {p['alpha']:g}"
        lines.append(
            f"| {p['objective']} | {parameter} | {p['retrieval_at_1']:.3f} | "
            f"{p['sentence_cosine']:.3f} | {p['bayes_attack_failure']:.3f} | "
            f"{p['bayes_top5_failure']:.3f} | {p['exact_mi_nats_per_token']:.2f} | "
            f"{p['fano_floor']:.3f} | {p['noise_std_mean']:.3f} |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], path: str | Path) -> Path:
    """Draw the frontier (utility on x; Bayes failure and exact MI on y) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = (
        ("retrieval_at_1", "utility: sentence retrieval@1 (noisy -> clean)"),
        ("sentence_cosine", "utility: cosine(clean, noisy sentence embedding)"),
    )
    for column, (x_key, x_label) in enumerate(panels):
        for row, (y_key, y_label) in enumerate(
            (
                ("bayes_attack_failure", "privacy: Bayes-attack failure (higher = more private)"),
                ("exact_mi_nats_per_token", "leak: exact MI, nats/token (lower = more private)"),
            )
        ):
            axis = axes[row][column]
            for objective, (color, marker, label) in STYLES.items():
                series = sorted(
                    (p for p in points if p["objective"] == objective), key=lambda p: p[x_key]
                )
                if series:
                    axis.plot(
                        [p[x_key] for p in series],
                        [p[y_key] for p in series],
                        "-",
                        color=color,
                        marker=marker,
                        label=label,
                    )
            if x_key == "retrieval_at_1":
                axis.axvline(0.95, color="black", linestyle=":", linewidth=1)
            if y_key == "bayes_attack_failure":
                axis.axhline(0.40, color="black", linestyle=":", linewidth=1)
            axis.set_xlabel(x_label)
            axis.set_ylabel(y_label)
            axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(
        "all-MiniLM-L6-v2 word embeddings, held-out pydoc text: privacy-utility frontier "
        "(dotted: the goal, retrieval@1 >= 0.95 and Bayes failure >= 0.40)",
        fontsize=10,
    )
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def replot(frontier_json: str, png: str) -> Path:
    """Redraw the plot of a saved ``frontier.json`` (no training)."""
    return plot(json.loads(Path(frontier_json).read_text()), png)


def main(args: list[str] | None = None) -> None:
    """Command line: every argument of :func:`sweep` as ``--name value``."""
    from jsonargparse import CLI

    CLI(sweep, args=args)


if __name__ == "__main__":
    main()
