"""Sweep ``alpha`` and draw the privacy-utility plane against isotropic Gaussian noise.

For each ``alpha`` a noise layer is trained from the same seed and evaluated on the validation
text; isotropic Gaussian noise is evaluated over a grid of stds. The plot puts utility (mean
sentence cosine) on the x axis and privacy (nearest-neighbour failure rate; mutual information
per token) on the y axis, so a method beats another at equal utility when its point lies above the
other's curve. ``sweep.json`` also gives, for each learned layer, the isotropic failure rates
interpolated at its utility.

    PYTHONPATH=. python -m mi_losses.apps.minilm.sweep --alphas '[0.003, 0.01, 0.03, 0.1]'
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from mi_losses.apps.minilm.data import PydocTextDataModule
from mi_losses.apps.minilm.evaluate import (
    IsotropicGaussianNoise,
    clean_sentence_embeddings,
    evaluate_noise,
)
from mi_losses.apps.minilm.task import MiniLMObfuscation
from mi_losses.callbacks import ComponentLossLogger

ATTACKS = ("nn_failure_rate_cosine", "nn_failure_rate_l2", "nn_failure_rate_l2_shift_aware")


def interpolate_at_utility(
    curve: list[dict[str, Any]], sentence_cosine: float, key: str
) -> float | None:
    """``key`` of the isotropic ``curve`` linearly interpolated at ``sentence_cosine``.

    ``None`` when ``sentence_cosine`` lies outside the curve's range (no equal-utility point).
    """
    points = sorted(
        (float(point["sentence_cosine"]), point[key])
        for point in curve
        if point.get(key) is not None
    )
    if not points or not points[0][0] <= sentence_cosine <= points[-1][0]:
        return None
    cosines, values = zip(*points, strict=True)
    return float(np.interp(sentence_cosine, cosines, values))


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Draw the privacy-utility plane of a sweep result to a PNG and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    isotropic = sorted(result["isotropic"], key=lambda point: point["sentence_cosine"])
    learned = result["learned"]
    figure, (left, right, third) = plt.subplots(1, 3, figsize=(16, 4.4))
    styles = {"nn_failure_rate_cosine": "-", "nn_failure_rate_l2": "--"}
    for key, style in styles.items():
        label = "cosine" if key.endswith("cosine") else "L2"
        left.plot(
            [p["sentence_cosine"] for p in isotropic],
            [p[key] for p in isotropic],
            style,
            color="tab:gray",
            marker="o",
            markersize=3,
            label=f"isotropic noise, {label} attack",
        )
        left.plot(
            [p["sentence_cosine"] for p in learned],
            [p[key] for p in learned],
            style,
            color="tab:blue",
            marker="s",
            label=f"learned layer, {label} attack",
        )
    left.plot(
        [p["sentence_cosine"] for p in learned],
        [p["nn_failure_rate_l2_shift_aware"] for p in learned],
        ":",
        color="tab:red",
        marker="^",
        label="learned layer, shift-aware L2 attack",
    )
    for point in learned:
        left.annotate(
            f"α={point['alpha']:g}",
            (point["sentence_cosine"], point["nn_failure_rate_cosine"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    left.set_xlabel("utility: cosine(clean, noisy sentence embedding)")
    left.set_ylabel("privacy: NN token-recovery failure rate")
    left.set_title("Nearest-neighbour attack (higher is more private)")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    right.plot(
        [p["sentence_cosine"] for p in isotropic],
        [p["mutual_information_nats_per_token"] for p in isotropic],
        "-o",
        color="tab:gray",
        markersize=3,
        label="isotropic noise",
    )
    right.plot(
        [p["sentence_cosine"] for p in learned],
        [p["mutual_information_nats_per_token"] for p in learned],
        "-s",
        color="tab:blue",
        label="learned layer",
    )
    right.set_yscale("log")
    right.set_xlabel("utility: cosine(clean, noisy sentence embedding)")
    right.set_ylabel("MI estimate, nats per token")
    right.set_title("Sub-batch MI upper bound (lower is more private)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    for points, name, color, marker in (
        (isotropic, "isotropic noise", "tab:gray", "o"),
        (learned, "learned layer", "tab:blue", "s"),
    ):
        ordered = sorted(points, key=lambda point: point["retrieval_top1"])
        third.plot(
            [p["retrieval_top1"] for p in ordered],
            [p["nn_failure_rate_cosine"] for p in ordered],
            "-",
            color=color,
            marker=marker,
            markersize=4,
            label=f"{name}, cosine attack",
        )
    third.plot(
        [p["retrieval_top1"] for p in learned],
        [p["nn_failure_rate_l2_shift_aware"] for p in learned],
        ":",
        color="tab:red",
        marker="^",
        label="learned layer, shift-aware L2 attack",
    )
    third.set_xlabel("utility: top-1 retrieval of the clean sentence")
    third.set_ylabel("privacy: NN token-recovery failure rate")
    third.set_title("The same attack against retrieval utility")
    third.legend(fontsize=7)
    third.grid(alpha=0.3)
    figure.suptitle("all-MiniLM-L6-v2, held-out pydoc text: privacy vs utility")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def sweep(
    alphas: list[float] | None = None,
    isotropic_stds: list[float] | None = None,
    max_steps: int = 240,
    output_dir: str = "outputs/minilm_sweep",
    seed: int = 0,
    learning_rate: float = 3e-3,
    max_std: float = 0.5,
    batch_size: int = 16,
    num_threads: int | None = None,
    learn_mean: bool = False,
) -> dict[str, Any]:
    """Train one noise layer per ``alpha``, evaluate it and isotropic noise; write JSON and PNG.

    Args:
        alphas: weights of the mutual information (default ``[0.003, 0.01, 0.03, 0.1]``).
        isotropic_stds: stds of the isotropic baseline curve (default: 0.005 to 0.3).
        max_steps: training steps per ``alpha``.
        output_dir: folder of ``sweep.json``, ``privacy_utility.png`` and the CSV logs.
        seed: seed of the data split, the training and the evaluation noise.
        learning_rate: Adam learning rate of the noise layer.
        max_std: upper bound of the learned ``sigma``.
        batch_size: training batch size (even).
        num_threads: torch intra-op CPU threads; ``None`` keeps torch's default.
        learn_mean: also learn the mean shift ``mu`` (default: ``sigma`` only, as the config).

    Returns:
        The sweep result: ``learned`` (one entry per ``alpha``), ``isotropic`` (one per std),
        ``seconds``.
    """
    start = time.perf_counter()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    alphas = [0.003, 0.01, 0.03, 0.1] if alphas is None else alphas
    if isotropic_stds is None:
        isotropic_stds = [0.005, 0.01, 0.02, 0.03, 0.045, 0.06, 0.08, 0.1, 0.13, 0.17, 0.22, 0.3]
    output = Path(output_dir)
    datamodule = PydocTextDataModule(batch_size=batch_size, seed=seed)
    datamodule.setup()
    batches = list(datamodule.val_dataloader())
    learned = []
    encoder = None
    clean_sentences = None
    for alpha in alphas:
        pl.seed_everything(seed, verbose=False)
        task = MiniLMObfuscation(
            alpha=alpha, learning_rate=learning_rate, max_std=max_std, learn_mean=learn_mean
        )
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
            logger=CSVLogger(output, name=f"alpha_{alpha:g}"),
            callbacks=[ComponentLossLogger(module_attribute="mi_loss", prefix="mi")],
        )
        fit_start = time.perf_counter()
        trainer.fit(task, datamodule=datamodule)
        fit_seconds = time.perf_counter() - fit_start
        task.eval()
        encoder = task.encoder
        if clean_sentences is None:
            clean_sentences = clean_sentence_embeddings(encoder, batches)
        metrics = evaluate_noise(
            encoder, task.noise_layer, batches, clean_sentences=clean_sentences, seed=seed
        )
        learned.append({"alpha": alpha, "fit_seconds": fit_seconds, **metrics})
        print(f"alpha={alpha:g}: {json.dumps(metrics)}", flush=True)
    if encoder is None:
        raise ValueError("alphas must not be empty")
    isotropic = [
        {
            "std": std,
            **evaluate_noise(
                encoder,
                IsotropicGaussianNoise(std),
                batches,
                clean_sentences=clean_sentences,
                seed=seed,
            ),
        }
        for std in isotropic_stds
    ]
    for point in learned:
        point["isotropic_at_equal_utility"] = {
            key: interpolate_at_utility(isotropic, point["sentence_cosine"], key)
            for key in (*ATTACKS, "mutual_information_nats_per_token", "retrieval_top1")
        }
    result = {
        "learned": learned,
        "isotropic": isotropic,
        "max_steps": max_steps,
        "learn_mean": learn_mean,
        "seed": seed,
        "seconds": time.perf_counter() - start,
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    figure = plot(result, output / "privacy_utility.png")
    print(format_sweep(result))
    print(f"wrote {output / 'sweep.json'} and {figure}")
    return result


def format_sweep(result: dict[str, Any]) -> str:
    """One Markdown row per learned layer: its numbers and isotropic noise's at equal utility."""
    lines = [
        "| alpha | sent. cosine | retrieval@1 | NN fail cos (iso) | NN fail L2 (iso) "
        "| NN fail L2 shift-aware (iso) | MI nats/token (iso) |",
        "|---|---|---|---|---|---|---|",
    ]

    def pair(point: dict[str, Any], key: str, digits: int) -> str:
        iso = point["isotropic_at_equal_utility"][key]
        iso_text = "n/a" if iso is None else f"{iso:.{digits}f}"
        return f"{point[key]:.{digits}f} ({iso_text})"

    for point in result["learned"]:
        lines.append(
            f"| {point['alpha']:g} | {point['sentence_cosine']:.4f} | "
            f"{point['retrieval_top1']:.4f} | {pair(point, ATTACKS[0], 4)} | "
            f"{pair(point, ATTACKS[1], 4)} | {pair(point, ATTACKS[2], 4)} | "
            f"{pair(point, 'mutual_information_nats_per_token', 1)} |"
        )
    return "\n".join(lines)


def replot(sweep_json: str, png: str) -> Path:
    """Redraw the plot of a saved ``sweep.json`` (no training)."""
    return plot(json.loads(Path(sweep_json).read_text()), png)


def main(args: list[str] | None = None) -> None:
    """Command line: every argument of :func:`sweep` as ``--name value``."""
    from jsonargparse import CLI

    CLI(sweep, args=args)


if __name__ == "__main__":
    main()
