"""The points of :func:`~mi_losses.evaluation.judge`: their schema and their Markdown table.

A point is one layer judged by every attacker that applies (``layer``, ``objective``,
``parameter``, ``value``, ``seed``, the utility, each attacker's failure, the strongest one);
:func:`check_points` checks a list of them, :func:`format_points` prints mean ± std over seeds,
:func:`format_attackers` one row per point with every attacker's failure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

REQUIRED_KEYS = (
    "layer",
    "objective",
    "parameter",
    "seed",
    "retrieval_at_1",
    "sentence_cosine",
    "nn_failure",
    "bayes_attack_failure",
    "inversion_failure",
    "strongest_attack_failure",
    "exact_mi_nats_per_token",
)
"""Keys every point has (``null`` where an attacker does not apply)."""


def _mean_spread(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    if len(present) == 1:
        return f"{present[0]:.3f}"
    return f"{statistics.mean(present):.3f} ± {statistics.stdev(present):.3f}"


def _epoch_cap(point: dict[str, Any]) -> str:
    """The inversion attack's epoch cap of a point, ``"-"`` where it was not run; ``"40+1"``
    where one more attacker (``extra_inversions``) judged it too."""
    settings = point.get("inversion_settings")
    if not settings:
        return "-"
    extra = len(point.get("extra_inversions", []))
    return f"{settings['max_epochs']}+{extra}" if extra else str(settings["max_epochs"])


def _attack_end(group: list[dict[str, Any]]) -> str:
    """How the inversion attacks of a group ended: ``", stopped at epoch 17.3"`` (early
    stopping) or ``", reached"`` (the cap) per seed; ``""`` for points that did not record it."""
    if not all("inversion_stopped_early" in point for point in group):
        return ""
    ends = [
        f"stopped at epoch {point['inversion_epochs']:.1f}"
        if point["inversion_stopped_early"]
        else "reached"
        for point in group
    ]
    return ", " + "; ".join(ends)


def format_points(points: list[dict[str, Any]], *, order: Sequence[str] = ()) -> str:
    """One Markdown row per (layer, objective, value, attack epoch cap): mean ± std over seeds.

    Rows follow ``order`` (layer names; others after them), then objective, value and the
    largest epoch cap first.

    The inversion cell says the attack's epoch cap and, where the points record it, whether
    early stopping ended training (and at which epoch) or the cap did.
    """
    groups: dict[tuple[str, str, str, float, str], list[dict[str, Any]]] = {}
    for point in points:
        key = (
            point["layer"],
            point["objective"],
            point["parameter"],
            point["value"],
            _epoch_cap(point),
        )
        groups.setdefault(key, []).append(point)
    columns = REQUIRED_KEYS[4:]  # the utility, every attacker's failure, the exact MI
    lines = [
        "| layer | objective | parameter | seeds | retrieval@1 | sent. cosine | NN fail | "
        "Bayes fail | inversion fail (epoch cap, end) | strongest fail | exact MI nats/token |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    layers = list(order)

    def rank(key: tuple[str, str, str, float, str]) -> tuple[int, str, str, float, int]:
        """Layer order, objective, value, then the largest epoch cap first."""
        cap = -int(key[4].split("+")[0]) if key[4][:1].isdigit() else 0
        index = layers.index(key[0]) if key[0] in layers else len(layers)
        return index, key[0], key[1], key[3], cap

    for key in sorted(groups, key=rank):
        layer, objective, parameter, value, cap = key
        group = groups[key]
        seeds = ",".join(str(p["seed"]) for p in group)
        cells = [_mean_spread([p[c] for p in group]) for c in columns]
        if cap != "-":
            cells[4] = f"{cells[4]} (cap {cap}{_attack_end(group)})"
        lines.append(
            f"| {layer} | {objective} | {parameter} {value:g} | {seeds} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def check_points(points: list[dict[str, Any]]) -> None:
    """Raise ``ValueError`` if a point lacks a required key or a failure is not in ``[0, 1]``."""
    for point in points:
        missing = [key for key in REQUIRED_KEYS if key not in point]
        if missing:
            raise ValueError(f"point {point.get('layer')} lacks {missing}")
        for key in REQUIRED_KEYS:
            value = point[key]
            if key.endswith("failure") and value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must lie in [0, 1], got {value}")
        applicable = [
            point[k]
            for k in ("nn_failure", "bayes_attack_failure", "inversion_failure")
            if point[k] is not None
        ]
        applicable += [attack["failure"] for attack in point.get("extra_inversions", [])]
        if not math.isclose(point["strongest_attack_failure"], min(applicable)):
            raise ValueError("strongest_attack_failure must be the lowest failure")


def _attack_cell(attack: dict[str, Any]) -> str:
    """``"0.351 (18.5; 128x2)"``: an inversion attacker's failure, the epoch at which early
    stopping ended it (``cap`` where the epoch cap did), its width x layers and schedule;
    ``"n/a"`` where it was not run. ``attack``: ``failure``, ``epochs``, ``stopped_early``,
    ``settings`` (the keys of a point's ``extra_inversions`` entry)."""
    if attack.get("failure") is None:
        return "n/a"
    notes = []
    if attack.get("epochs") is not None:
        notes.append(f"{attack['epochs']:.1f}" if attack.get("stopped_early") else "cap")
    settings = attack.get("settings") or {}
    if settings:
        schedule = ", cosine" if settings.get("schedule") == "cosine" else ""
        notes.append(f"{settings['d_model']}x{settings['num_layers']}{schedule}")
    return f"{attack['failure']:.3f} ({'; '.join(notes)})" if notes else f"{attack['failure']:.3f}"


def format_attackers(points: list[dict[str, Any]]) -> str:
    """One Markdown row per point: utility, every attacker's failure (each inversion attacker's
    with the epoch at which it stopped and its size), the strongest failure, the attack text and
    the CPU time of the point (the layer's training included).

    ``attack text``: ``shared`` where the attacks trained on the layer's training text, else
    the number of training sequences of the attacks, ``disjoint`` from the layer's or ``of the
    layer's`` (the control of ``attack_on_layer_text``).
    """
    extra = max((len(point.get("extra_inversions", [])) for point in points), default=0)
    titles = [
        "layer", "parameter", "seed", "retrieval@1", "NN fail", "Bayes fail",
        "inversion fail (epoch)", *(f"attacker {i + 2} fail (epoch)" for i in range(extra)),
        "strongest fail", "attack text", "CPU s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for point in points:
        first = {key: point.get(f"inversion_{key}") for key in ("epochs", "stopped_early")}
        first |= {
            "failure": point["inversion_failure"],
            "settings": point.get("inversion_settings"),
        }
        attackers = [_attack_cell(a) for a in (first, *point.get("extra_inversions", []))]
        attackers += ["n/a"] * (1 + extra - len(attackers))
        fraction = point.get("attack_text_fraction") or 0
        text = "shared"
        if fraction:
            kind = "of the layer's" if point.get("attack_on_layer_text") else "disjoint"
            text = f"{point['attack_train_sequences']} {kind}"
        cpu = point.get("cpu_seconds")
        cells = [
            point["layer"],
            f"{point['parameter']} {point['value']:g}",
            str(point["seed"]),
            *(
                "n/a" if point[key] is None else f"{point[key]:.3f}"
                for key in ("retrieval_at_1", "nn_failure", "bayes_attack_failure")
            ),
            *attackers,
            f"{point['strongest_attack_failure']:.3f}",
            text,
            "n/a" if cpu is None else f"{cpu:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
