"""Calibration: every estimator and bound of the library against channels whose MI is known.

Two kinds of channel, several seeds each, everything in float64:

- **Gaussian channels** ``Y = X + N``, ``X ~ N(0, snr^2 I_d)``, ``N ~ N(0, I_d)``: the truth is
  ``d/2 log(1 + snr^2)`` nats (:func:`~mi_losses.functional.gaussian_channel_mutual_information`),
  over dimension ``d``, signal-to-noise ``snr`` and batch size ``B``.
- **Synthetic vocabularies** (a context-free token noise layer): ``V`` rows with a Zipf prior
  and per-row stds. ``vocab-1d`` has its exact MI by numerical integration; ``vocab-8d`` by the
  exact-mixture formula in float64 on ``truth_tokens`` tokens (its standard error is printed).

Estimators per batch: the sub-batch L1Out estimate (``mutual_information_sub_batch``, an upper
bound in expectation), the InfoNCE estimate from the same pairs (a lower bound in expectation),
the Kolchinsky–Tracey KL/Bhattacharyya bounds (which bound the MI of the batch's *empirical*
channel, also printed, estimated by Monte Carlo) and, for vocabularies, the known-prior
vocabulary MI. Writes ``calibration.csv``, ``calibration_table.md`` and ``calibration.png``::

    mi-losses-calibrate --out docs            # or: python -m mi_losses.apps.calibrate
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import torch

from mi_losses.apps.calibrate_plot import plot_calibration
from mi_losses.functional import (
    gaussian_channel_mutual_information,
    kolchinsky_tracey_mutual_information_bounds,
    mutual_information_bounds,
    mutual_information_sub_batch,
    vocabulary_mutual_information_estimate,
)

Row = dict[str, float | int | str]
ESTIMATORS = ("l1out_upper", "infonce_lower", "kt_kl_upper", "kt_bhattacharyya_lower")
VOCAB_ESTIMATORS = ("vocabulary",)


def infonce_lower(stds: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """InfoNCE from the sub-batch pairs (docs/math.md, the sandwich from one pass), ``(B, 1, E)``:
    ``mutual_information_bounds(...).lower``, no mean shift, no mask."""
    return mutual_information_bounds(torch.zeros_like(clean), stds, None, clean, noisy).lower


def empirical_channel_mi(
    centres: torch.Tensor, stds: torch.Tensor, samples: int, generator: torch.Generator
) -> float:
    """Monte Carlo MI of the empirical channel (``X`` uniform over the batch): the KT bounds' truth."""
    n, d = centres.shape
    component = torch.arange(n).repeat(samples)
    y = centres[component] + stds[component] * torch.randn(
        component.shape[0], d, generator=generator, dtype=torch.float64
    )
    total = 0.0
    for start in range(0, y.shape[0], 4096):
        part, comp = y[start : start + 4096], component[start : start + 4096]
        log_p = (-0.5 * ((part[:, None] - centres[None]) / stds[None]) ** 2 - stds[None].log()).sum(
            -1
        )
        own = log_p.gather(1, comp[:, None])[:, 0]
        total += float((own - torch.logsumexp(log_p, 1) + math.log(n)).sum())
    return total / y.shape[0]


def batch_estimates(
    clean: torch.Tensor, stds: torch.Tensor, noisy: torch.Tensor, generator: torch.Generator
) -> dict[str, float]:
    """Every pairwise estimator on one ``(B, 1, E)`` batch, plus the empirical-channel truth."""
    zeros = torch.zeros_like(clean)
    kt = kolchinsky_tracey_mutual_information_bounds(zeros, stds, None, clean)
    return {
        "l1out_upper": float(mutual_information_sub_batch(zeros, stds, None, clean, noisy)),
        "infonce_lower": float(infonce_lower(stds, clean, noisy)),
        "kt_kl_upper": float(kt.upper),
        "kt_bhattacharyya_lower": float(kt.lower),
        "empirical_channel_truth": empirical_channel_mi(clean[:, 0], stds[:, 0], 16, generator),
    }


def gaussian_rows(dims: list[int], snrs: list[float], batches: list[int], seeds: int) -> list[Row]:
    rows: list[Row] = []
    for d in dims:
        for snr in snrs:
            truth = float(
                gaussian_channel_mutual_information(
                    torch.full((d,), snr, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
                )
            )
            for b in batches:
                for seed in range(seeds):
                    g = torch.Generator().manual_seed(1000 * seed + 7 * d + b)
                    clean = snr * torch.randn(b, 1, d, generator=g, dtype=torch.float64)
                    stds = torch.ones_like(clean)
                    noisy = clean + torch.randn(b, 1, d, generator=g, dtype=torch.float64)
                    row: Row = {"channel": "gaussian", "d": d, "snr": snr, "batch": b}
                    row |= {"seed": seed, "truth": truth, "truth_se": 0.0}
                    row |= batch_estimates(clean, stds, noisy, g)
                    rows.append(row)
    return rows


class SyntheticVocabulary:
    """``V`` rows, Zipf(1) prior, small mean shifts, per-row stds: a known token channel."""

    def __init__(self, name: str, v: int, e: int, std_range: tuple[float, float], seed: int):
        g = torch.Generator().manual_seed(seed)
        self.name = name
        if e == 1:
            self.table = torch.linspace(-3.0, 3.0, v, dtype=torch.float64)[:, None]
        else:
            self.table = torch.randn(v, e, generator=g, dtype=torch.float64)
        self.means = 0.1 * torch.randn(v, e, generator=g, dtype=torch.float64)
        low, high = std_range
        self.stds = low + (high - low) * torch.rand(v, e, generator=g, dtype=torch.float64)
        ranks = torch.randperm(v, generator=g).double() + 1.0
        self.prior = (1.0 / ranks) / (1.0 / ranks).sum()

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` tokens from the prior and their noisy embeddings ``(n, 1, E)``."""
        tokens = torch.multinomial(self.prior, n, replacement=True, generator=g)[:, None]
        noise = torch.randn(n, 1, self.table.shape[1], generator=g, dtype=torch.float64)
        return tokens, self.table[tokens] + self.means[tokens] + self.stds[tokens] * noise

    def vocabulary_mi(self, tokens: torch.Tensor, noisy: torch.Tensor) -> tuple[float, float]:
        """The known-prior estimate and its standard error over tokens."""
        est = vocabulary_mutual_information_estimate(
            self.means, self.stds, None, tokens, noisy, self.table, self.prior
        )
        assert est.per_query is not None
        return float(est.value), float(est.per_query.std()) / math.sqrt(est.per_query.numel())

    def truth(self, tokens: int, g: torch.Generator) -> tuple[float, float]:
        """Exact MI: trapezoid integral in 1-d, else the exact mixture on ``tokens`` samples."""
        if self.table.shape[1] == 1:
            return exact_mutual_information_1d(
                (self.table + self.means)[:, 0], self.stds[:, 0], self.prior
            ), 0.0
        return self.vocabulary_mi(*self.sample(tokens, g))


def exact_mutual_information_1d(
    centres: torch.Tensor, stds: torch.Tensor, prior: torch.Tensor, points: int = 400_001
) -> float:
    """``sum_v p_v int N(y; c_v, s_v) log(N(y; c_v, s_v) / q(y)) dy`` by the trapezoid rule."""
    y = torch.linspace(
        float((centres - 12 * stds).min()), float((centres + 12 * stds).max()), points
    ).double()
    log_n = -0.5 * ((y[None] - centres[:, None]) / stds[:, None]) ** 2 - stds[:, None].log()
    log_n = log_n - 0.5 * math.log(2 * math.pi)
    log_q = torch.logsumexp(prior.log()[:, None] + log_n, 0)
    integrand = (prior[:, None] * log_n.exp() * (log_n - log_q[None])).sum(0)
    return float(torch.trapezoid(integrand, y))


def vocabulary_rows(batches: list[int], seeds: int, truth_tokens: int) -> list[Row]:
    rows: list[Row] = []
    vocabularies = [
        SyntheticVocabulary("vocab-1d", 16, 1, (0.15, 0.6), seed=1),
        SyntheticVocabulary("vocab-8d", 256, 8, (0.3, 1.0), seed=2),
    ]
    for vocab in vocabularies:
        truth, truth_se = vocab.truth(truth_tokens, torch.Generator().manual_seed(99))
        e = vocab.table.shape[1]
        entropy = float(-(vocab.prior * vocab.prior.log()).sum())
        for b in batches:
            for seed in range(seeds):
                g = torch.Generator().manual_seed(1000 * seed + b)
                tokens, noisy = vocab.sample(b, g)
                clean = vocab.table[tokens] + vocab.means[tokens]
                row: Row = {"channel": vocab.name, "d": e, "snr": math.nan, "batch": b}
                row |= {"seed": seed, "truth": truth, "truth_se": truth_se, "h_x": entropy}
                row |= batch_estimates(clean, vocab.stds[tokens], noisy, g)
                row["vocabulary"] = vocab.vocabulary_mi(tokens, noisy)[0]
                rows.append(row)
    return rows


def summarise(rows: list[Row]) -> list[Row]:
    """Mean and standard error over seeds of every estimate, per grid cell."""
    cells: dict[tuple[object, ...], list[Row]] = {}
    for row in rows:
        cells.setdefault((row["channel"], row["d"], row["snr"], row["batch"]), []).append(row)
    names = (*ESTIMATORS, "empirical_channel_truth", *VOCAB_ESTIMATORS)
    summary: list[Row] = []
    for group in cells.values():
        first = group[0]
        out: Row = {k: first[k] for k in ("channel", "d", "snr", "batch", "truth", "truth_se")}
        out["seeds"] = len(group)
        if "h_x" in first:
            out["h_x"] = first["h_x"]
        for name in names:
            if name not in first:
                continue
            values = torch.tensor([float(r[name]) for r in group], dtype=torch.float64)
            se = float(values.std()) / math.sqrt(len(group)) if len(group) > 1 else math.nan
            out[name], out[name + "_se"] = float(values.mean()), se
        summary.append(out)
    return summary


def markdown_table(summary: list[Row]) -> str:
    """One line per cell: truth, then every estimate as ``mean ± SE`` (nats)."""
    names = ("truth", *ESTIMATORS, "empirical_channel_truth", *VOCAB_ESTIMATORS)
    header = "| channel | d | snr | B | " + " | ".join(names) + " |"
    lines = [header, "|" + "---|" * (4 + len(names))]
    for row in summary:
        cells = [str(row["channel"]), str(row["d"]), f"{float(row['snr']):g}", str(row["batch"])]
        for name in names:
            if name not in row:
                cells.append("")
            elif name == "truth":
                se = float(row["truth_se"])
                cells.append(f"{float(row['truth']):.3f}" + (f" ± {se:.3f}" if se else ""))
            else:
                cells.append(f"{float(row[name]):.3f} ± {float(row[name + '_se']):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calibrate(
    out: Path = Path("calibration"),
    dims: list[int] | None = None,
    snrs: list[float] | None = None,
    batches: list[int] | None = None,
    vocab_batches: list[int] | None = None,
    seeds: int = 3,
    truth_tokens: int = 100_000,
    num_threads: int = 1,
) -> list[Row]:
    """Run the grid, print the table and write it under ``out`` (CSV, markdown and PNG).

    Args:
        out: output folder.
        dims: Gaussian-channel dimensions ``d`` (default ``[1, 4, 16]``).
        snrs: signal-to-noise ratios ``s / sigma`` (default ``[0.5, 2, 8]``).
        batches: Gaussian-channel batch sizes (even; default ``[64, 256]``).
        vocab_batches: tokens per batch on the synthetic vocabularies (default
            ``[64, 256, 1024]``).
        seeds: repetitions per cell (standard errors are over seeds).
        truth_tokens: tokens of the float64 exact-mixture truth of ``vocab-8d``.
        num_threads: torch CPU threads.
    """
    torch.set_num_threads(num_threads)
    started = time.perf_counter()
    rows = gaussian_rows(dims or [1, 4, 16], snrs or [0.5, 2.0, 8.0], batches or [64, 256], seeds)
    rows += vocabulary_rows(vocab_batches or [64, 256, 1024], seeds, truth_tokens)
    summary = summarise(rows)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "calibration.csv").open("w", newline="") as handle:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(summary)
    elapsed = time.perf_counter() - started
    (out / "calibration_table.md").write_text(
        f"{table}\n\nnats; mean ± standard error over {seeds} seeds; {elapsed:.0f} s.\n"
    )
    plot_calibration(summary, out / "calibration.png")
    print(table)
    print(
        f"\n{len(rows)} runs in {elapsed:.1f} s; wrote calibration.csv, calibration_table.md, calibration.png under {out}"
    )
    return summary


def main(args: list[str] | None = None) -> None:
    """Command line: every argument of :func:`calibrate` as ``--name value``."""
    from jsonargparse import CLI

    CLI(calibrate, args=args)


if __name__ == "__main__":
    main()
