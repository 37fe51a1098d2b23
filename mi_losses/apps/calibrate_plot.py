"""The calibration figure: every estimator and bound against the truth (matplotlib, no pyplot)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

Row = dict[str, float | int | str]

STYLE = {
    "l1out_upper": ("sub-batch L1Out (upper in expectation)", "tab:red", "v"),
    "infonce_lower": ("InfoNCE (lower in expectation)", "tab:blue", "^"),
    "kt_kl_upper": ("KT-KL (upper, empirical channel)", "tab:orange", "1"),
    "kt_bhattacharyya_lower": ("KT-Bhattacharyya (lower, empirical channel)", "tab:cyan", "2"),
    "empirical_channel_truth": ("empirical-channel MI (what KT bounds)", "tab:gray", "x"),
    "vocabulary": ("known-prior vocabulary MI", "tab:green", "o"),
}


def _errorbar(axes: Axes, xs: list[float], rows: list[Row], name: str, offset: float) -> None:
    if not rows or name not in rows[0]:
        return
    label, colour, marker = STYLE[name]
    means = [float(r[name]) for r in rows]
    errors = [0.0 if math.isnan(float(r[name + "_se"])) else float(r[name + "_se"]) for r in rows]
    axes.errorbar(
        [x * offset for x in xs],
        means,
        yerr=errors,
        label=label,
        color=colour,
        marker=marker,
        linestyle="none",
        capsize=2,
    )


def _truth_panel(axes: Axes, rows: list[Row]) -> None:
    """Gaussian channels at the largest batch: estimate against truth, log-log."""
    batch = max(int(r["batch"]) for r in rows)
    rows = sorted((r for r in rows if int(r["batch"]) == batch), key=lambda r: float(r["truth"]))
    truths = [float(r["truth"]) for r in rows]
    for i, name in enumerate(STYLE):
        _errorbar(axes, truths, rows, name, 1.0 + 0.03 * (i - 2))
    span = [min(truths) * 0.8, max(truths) * 1.25]
    axes.plot(span, span, color="black", linewidth=1, label="truth")
    axes.axhline(math.log(batch // 2 + 1), color="tab:blue", linestyle=":", linewidth=1)
    axes.axhline(math.log(batch), color="tab:orange", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_yscale("symlog", linthresh=0.1)
    axes.set_ylim(bottom=0.0)
    axes.set_xlabel("true MI of the Gaussian channel (nats)")
    axes.set_ylabel("estimate (nats)")
    axes.set_title(f"Gaussian channels, B = {batch} (dotted: log(B/2+1), log B)")


def _batch_panel(axes: Axes, rows: list[Row], title: str, h_x: float | None) -> None:
    """One channel over batch sizes, with the truth (and ``H(X)``) as lines."""
    rows = sorted(rows, key=lambda r: int(r["batch"]))
    batches = [float(r["batch"]) for r in rows]
    for i, name in enumerate(STYLE):
        _errorbar(axes, batches, rows, name, 1.0 + 0.04 * (i - 2))
    truth = float(rows[0]["truth"])
    axes.axhline(truth, color="black", linewidth=1, label="truth")
    if h_x is not None:
        axes.axhline(h_x, color="tab:green", linestyle="--", linewidth=1, label="H(X)")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size (samples or tokens)")
    axes.set_ylabel("estimate (nats)")
    axes.set_title(title)


def plot_calibration(summary: list[Row], path: Path) -> None:
    """Write the 2 x 2 calibration figure to ``path`` (PNG)."""
    figure = Figure(figsize=(15, 11), layout="constrained")
    panels = figure.subplots(2, 2)
    gaussian = [r for r in summary if r["channel"] == "gaussian"]
    if gaussian:
        _truth_panel(panels[0][0], gaussian)
        cells = sorted({(int(r["d"]), float(r["snr"])) for r in gaussian})
        d, snr = cells[len(cells) // 2]
        chosen = [r for r in gaussian if int(r["d"]) == d and float(r["snr"]) == snr]
        _batch_panel(panels[0][1], chosen, f"Gaussian channel d = {d}, snr = {snr:g}", None)
    for axes, name in ((panels[1][0], "vocab-1d"), (panels[1][1], "vocab-8d")):
        rows = [r for r in summary if r["channel"] == name]
        if rows:
            h_x = float(rows[0]["h_x"]) if "h_x" in rows[0] else None
            _batch_panel(axes, rows, f"synthetic vocabulary {name}", h_x)
    handles, labels = panels[1][1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=4)
    figure.savefig(path, dpi=110)
