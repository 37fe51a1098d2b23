"""The report as tables: the full Markdown table (docs) and a narrow one for a terminal.

A report is ``{"results": {row name: metrics}}`` as :func:`~mi_losses.evaluation.compare`
writes it; the JSON keeps every number, the tables round them.
"""

from __future__ import annotations

from typing import Any

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
"""``(key, title, decimals)`` of every column of a report row."""

ROW_ATTACKS = (
    "nn_failure_cosine",
    "nn_failure_l2",
    "nn_failure_l2_shift_aware",
    "bayes_attack_failure",
    "inversion_failure",
)
"""The failures of a report row's attackers; ``strongest_attack_failure`` is their minimum."""

BUCKET_COLUMNS = (
    ("token_share", "token share", 3),
    ("self_information_nats", "self-info nats", 2),
    ("exact_mi_nats_per_token", "exact MI nats", 2),
    ("hidden_fraction", "hidden", 3),
    ("bayes_attack_failure", "Bayes fail", 3),
)
"""``(key, title, decimals)`` of the per-bucket table."""

SHORT_NAMES = {"isotropic_equal_utility": "isotropic", "frequency_rule": "freq. rule"}
"""Row names of the terminal table (``isotropic``: of equal sentence cosine)."""


def cell(value: Any, digits: int) -> str:
    """``value`` with ``digits`` decimals; ``n/a`` for ``None``; a value that rounds to zero
    prints ``0.000``, never ``-0.000``."""
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _markdown(rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]


SHORT_BUCKET_TITLES = ("share", "self-info", "MI", "hidden", "Bayes fail")
"""Titles of :data:`BUCKET_COLUMNS` in the terminal table."""


def _bucket_rows(
    report: dict[str, Any], names: dict[str, str], titles: tuple[str, ...]
) -> list[list[str]]:
    rows = [["method", "bucket", *titles]]
    for method, metrics in report["results"].items():
        for bucket, values in metrics.get("buckets", {}).items():
            cells = [cell(values[key], digits) for key, _, digits in BUCKET_COLUMNS]
            rows.append([names.get(method, method), bucket, *cells])
    return rows


def format_table(report: dict[str, Any]) -> str:
    """The report's rows as a Markdown table (every column), then the per-bucket table."""
    rows = [["method", *(title for _, title, _ in COLUMNS)]]
    for method, metrics in report["results"].items():
        rows.append([method, *(cell(metrics.get(key), digits) for key, _, digits in COLUMNS)])
    titles = tuple(title for _, title, _ in BUCKET_COLUMNS)
    return "\n".join([*_markdown(rows), "", *_markdown(_bucket_rows(report, {}, titles))])


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        left = row[0].ljust(widths[0])
        lines.append(
            "  ".join([left, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        )
        if index == 0:
            lines.append("-" * len(lines[0]))
    return lines


def format_terminal(report: dict[str, Any]) -> str:
    """The report for a terminal (under 80 columns for three rows): one line per metric and
    a column per row, then the per-bucket table; metrics no row has are left out."""
    results = report["results"]
    header = ["metric", *(SHORT_NAMES.get(name, name) for name in results)]
    rows = [header]
    for key, title, digits in COLUMNS:
        if any(metrics.get(key) is not None for metrics in results.values()):
            rows.append([title, *(cell(metrics.get(key), digits) for metrics in results.values())])
    buckets = _bucket_rows(report, SHORT_NAMES, SHORT_BUCKET_TITLES)
    lines = _aligned(rows)
    if len(buckets) > 1:
        lines += ["", *_aligned(buckets)]
    return "\n".join(lines)
