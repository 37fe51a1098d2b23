"""The tables of ``bench_versions.py``: one Markdown row per shape and checkout, ``Compare``.

A record is one subprocess's result: ``checkout``, ``commit``, ``shape``, ``peak_mib`` and the
``library`` and ``floor`` timings (``raw_times``, ``number_per_run``), or an ``error``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch.utils import benchmark

from benchmarks.timing import rebuilt

LABEL = "mutual_information_sub_batch forward + backward"


@dataclasses.dataclass(frozen=True)
class Best:
    """A checkout's round with the fastest median library time on one shape."""

    library: benchmark.Measurement
    floor: benchmark.Measurement
    peak_mib: float
    peaks: tuple[float, ...]  # of every round
    rounds: int
    commit: str
    load: float | None  # 1-minute load average when that round ended


def _timing(record: dict[str, Any], name: str, description: str) -> benchmark.Measurement:
    label = LABEL if name == "library" else "its GEMM floor (6 products)"
    return rebuilt(
        record[name]["raw_times"],
        record[name]["number_per_run"],
        label=label,
        sub_label=record["shape"].replace(",", " "),
        description=description,
        num_threads=record.get("threads", 1),
    )


def best_rounds(records: list[dict[str, Any]]) -> dict[tuple[str, str], Best]:
    """``(shape, checkout) -> Best`` over the records that did not fail."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        if "error" not in record:
            grouped.setdefault((record["shape"], record["checkout"]), []).append(record)
    best = {}
    for key, group in grouped.items():
        timed = [(_timing(r, "library", key[1]), r) for r in group]
        library, record = min(timed, key=lambda pair: pair[0].median)
        best[key] = Best(
            library=library,
            floor=_timing(record, "floor", key[1]),
            peak_mib=record["peak_mib"],
            peaks=tuple(r["peak_mib"] for r in group),
            rounds=len(group),
            commit=record.get("commit", "?"),
            load=record.get("load"),
        )
    return best


def _ordered(records: list[dict[str, Any]], key: str) -> list[str]:
    return list(dict.fromkeys(record[key] for record in records))


def _mib(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _peak_cell(best: Best) -> str:
    """The chosen round's peak, and the range over the rounds where they differ."""
    low, high = min(best.peaks), max(best.peaks)
    spread = f" ({_mib(low)}-{_mib(high)})" if high - low > max(1.0, 0.02 * high) else ""
    return _mib(best.peak_mib) + spread


def markdown_table(records: list[dict[str, Any]]) -> str:
    """Shape, checkout (commit), median seconds, floor, ratios to the floor and to the first
    checkout (the baseline), extra peak MiB and its ratio, rounds, the load average at the end
    of the kept round; failed runs say why."""
    best = best_rounds(records)
    checkouts = _ordered(records, "checkout")
    lines = [
        "| shape | checkout | s | GEMM floor s | s / floor | s / baseline | extra peak MiB | "
        "peak / baseline | rounds | load |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for shape in _ordered(records, "shape"):
        base = best.get((shape, checkouts[0]))
        for name in checkouts:
            row = best.get((shape, name))
            if row is None:
                errors = [
                    r["error"] for r in records if (r["shape"], r["checkout"]) == (shape, name)
                ]
                if not errors:  # this checkout was not measured on this shape
                    continue
                reason = f"failed: {errors[-1]}"
                lines.append(f"| {shape.replace(',', ' ')} | {name} | {reason} |" + " |" * 7)
                continue
            seconds, floor = row.library.median, row.floor.median
            time_ratio = f"{seconds / base.library.median:.2f}x" if base else "—"
            peak_ratio = f"{row.peak_mib / base.peak_mib:.2f}x" if base and base.peak_mib else "—"
            lines.append(
                f"| {shape.replace(',', ' ')} | {name} ({row.commit}) | {seconds:.4g} | "
                f"{floor:.4g} | {seconds / floor:.2f}x | {time_ratio} | {_peak_cell(row)} | "
                f"{peak_ratio} | {row.rounds} | {'—' if row.load is None else f'{row.load:.1f}'} |"
            )
    return "\n".join(lines)


def compare_tables(records: list[dict[str, Any]]) -> None:
    """Print ``benchmark.Compare`` of the best rounds: the library, then the floors."""
    best = best_rounds(records)
    measurements = [b.library for b in best.values()] + [b.floor for b in best.values()]
    benchmark.Compare(measurements).print()
