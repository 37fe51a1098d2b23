"""The report's tables: the full Markdown one and the narrow one for a terminal."""

from __future__ import annotations

import json
from pathlib import Path

from mi_losses.evaluation import COLUMNS, format_table, format_terminal

DOCS = Path(__file__).resolve().parents[2] / "docs"
REPORT = json.loads((DOCS / "minilm_report.json").read_text())
GAUSSIAN = json.loads((DOCS / "minilm_gaussian_report.json").read_text())  # has the buckets


def test_markdown_table_has_every_column_and_the_results_page_prints_it() -> None:
    table = format_table(REPORT)
    header = table.splitlines()[0]
    assert header.count("|") == len(COLUMNS) + 2
    page = (Path(__file__).resolve().parents[2] / "docs" / "results.md").read_text()
    first_table = "\n".join(table.split("\n\n")[0].splitlines())
    assert first_table in page


def test_terminal_table_fits_80_columns_and_keeps_the_values() -> None:
    text = format_terminal(REPORT)
    assert max(len(line) for line in text.splitlines()) <= 80
    learned = REPORT["results"]["learned"]
    line = next(row for row in text.splitlines() if row.startswith("exact MI nats/token"))
    assert line.split()[-3] == f"{learned['exact_mi_nats_per_token']:.2f}"
    assert "inversion fail" in text and "rank 21-500" in format_terminal(GAUSSIAN)


def test_terminal_table_leaves_out_metrics_no_row_has_and_never_prints_minus_zero() -> None:
    report = {"results": {"learned": {"sentence_cosine": -0.0001, "retrieval_at_1": 0.5}}}
    lines = format_terminal(report).splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["sent.", "retrieval@1"]
    assert lines[2].split()[-1] == "0.000"
