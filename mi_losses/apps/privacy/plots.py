"""The privacy frontier's figures: every attacker's failure against retrieval@1, and the
inversion attack's training curves (``docs/privacy_frontier.png``,
``docs/privacy_inversion_curves.png``), from the points of
:func:`~mi_losses.apps.privacy.frontier.run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mi_losses.apps.privacy.frontier import STYLES


def largest_budget(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (layer, objective, value, seed), only the points with the largest inversion epoch cap
    (then the most ``extra_inversions``).

    A point judged by attacks of several budgets keeps the strongest one (its privacy figure);
    a point without an inversion attack is kept as it is.
    """

    def cap(point: dict[str, Any]) -> tuple[int, int]:
        settings = point.get("inversion_settings")
        extra = len(point.get("extra_inversions", []))
        return (int(settings["max_epochs"]), extra) if settings else (-1, 0)

    best: dict[tuple[Any, ...], tuple[int, int]] = {}
    for point in points:
        key = (point["layer"], point["objective"], point["value"], point["seed"])
        best[key] = max(best.get(key, (-1, 0)), cap(point))
    return [
        point
        for point in points
        if cap(point) == best[(point["layer"], point["objective"], point["value"], point["seed"])]
    ]


def plot(points: list[dict[str, Any]], path: str | Path) -> Path:
    """Strongest-attack failure and each attacker's failure against retrieval@1, to a PNG.

    Each point is drawn with its largest inversion budget only (:func:`largest_budget`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = largest_budget(points)

    figure, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for layer, (color, marker, label) in STYLES.items():
        series = [p for p in points if p["layer"] == layer]
        if not series:
            continue
        axes[0].scatter(
            [p["retrieval_at_1"] for p in series],
            [p["strongest_attack_failure"] for p in series],
            color=color,
            marker=marker,
            label=label,
        )
        for key, style in (("bayes_attack_failure", "x"), ("inversion_failure", "+")):
            kept = [p for p in series if p[key] is not None]
            axes[1].scatter(
                [p["retrieval_at_1"] for p in kept],
                [p[key] for p in kept],
                color=color,
                marker=style,
                s=50,
            )
    axes[1].scatter([], [], color="black", marker="x", label="Bayes (one token)")
    axes[1].scatter([], [], color="black", marker="+", label="learned inversion (context)")
    for axis in axes:
        axis.axvline(0.95, color="black", linestyle=":", linewidth=1)
        axis.axhline(0.5, color="black", linestyle=":", linewidth=1)
        axis.set_xlabel("utility: sentence retrieval@1 (fraction of 192 validation sentences)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0].set_ylabel("strongest-attack failure (fraction of noised tokens missed)")
    axes[1].set_ylabel("attacker failure (fraction of noised tokens missed)")
    axes[0].set_title("privacy = failure of the strongest attacker", fontsize=10)
    axes[1].set_title(
        "Bayes vs learned inversion, same draw (largest attack budget per point)", fontsize=10
    )
    figure.suptitle(
        "all-MiniLM-L6-v2, held-out pydoc text (dotted: the goal, retrieval@1 >= 0.95 and "
        "failure >= 0.5)",
        fontsize=10,
    )
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_curves(points: list[dict[str, Any]], path: str | Path) -> Path:
    """The inversion attack's validation failure against training steps, one line per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for point in points:
        curve = point.get("inversion_curve")
        if not curve:
            continue
        color = STYLES[point["layer"]][0]
        axis.plot(
            [c["step"] for c in curve],
            [c["failure"] for c in curve],
            color=color,
            alpha=0.7,
            linewidth=1,
        )
    for color, _, label in STYLES.values():
        axis.plot([], [], color=color, label=label)
    axis.set_xlabel("inversion training step (batches of 32 sequences)")
    axis.set_ylabel("validation failure over candidates (fraction of noised tokens)")
    axis.set_title("learned inversion attack: validation failure while training", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
