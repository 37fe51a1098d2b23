"""The benchmark script runs on a tiny grid and writes its tables (never asserts on time)."""

from __future__ import annotations

import ast
import csv
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from benchmarks.grids import Case, make_inputs
from benchmarks.naive import naive_mutual_information_sub_batch
from tests import reference

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_estimators.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_estimators", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_estimators"] = module
    spec.loader.exec_module(module)
    return module


def _read_csv(path: Path) -> tuple[str, list[dict[str, str]]]:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# machine: ")
    return lines[0], list(csv.DictReader(lines[1:]))


@pytest.mark.slow
def test_tiny_grid_writes_tables_and_naive_agrees_with_library(
    bench: ModuleType, tmp_path: Path
) -> None:
    rows = bench.main(["--grid", "tiny", "--out", str(tmp_path), "--warmup", "0", "--repeats", "1"])
    assert len(rows) == len(bench.grid_tiny()) == 4

    machine, records = _read_csv(tmp_path / "results_cpu.csv")
    assert "torch " + torch.__version__ in machine
    assert list(records[0]) == bench.CSV_COLUMNS
    assert {(r["granularity"], r["dtype"]) for r in records} == {
        ("sequence", "float32"),
        ("sequence", "bfloat16"),
        ("token", "float32"),
        ("token", "bfloat16"),
    }
    for record in records:
        for key in ("naive_s", "library_s", "floor_s", "naive_over_library_time"):
            assert float(record[key]) > 0, key
        for key in ("naive_peak_mib", "library_peak_mib", "floor_peak_mib"):
            assert float(record[key]) >= 0, key
        assert record["note"] == ""
        # the naive broadcast and the library compute the same estimate and gradients
        tolerance = 1e-5 if record["dtype"] == "float32" else 2e-2  # bf16: rounded output
        assert float(record["naive_vs_library_rel_diff"]) < tolerance
        assert float(record["naive_vs_library_grad_rel_diff"]) < 100 * tolerance
        assert float(record["library_rel_err"]) < tolerance

    markdown = (tmp_path / "results_cpu.md").read_text()
    header = "| " + " | ".join(name for name, _, _ in bench.MARKDOWN_COLUMNS) + " |"
    assert header in markdown
    assert machine.removeprefix("# machine: ") in markdown
    assert markdown.count("\n| sequence ") == 2 and markdown.count("\n| token ") == 2


@pytest.mark.slow
def test_naive_is_skipped_over_budget_and_the_row_says_so(
    bench: ModuleType, tmp_path: Path
) -> None:
    rows = bench.main(
        [
            *("--grid", "tiny", "--out", str(tmp_path), "--warmup", "0", "--repeats", "1"),
            *("--dtype", "float32", "--only", "token", "--naive-budget-gib", "0"),
        ]
    )
    assert len(rows) == 1
    (row,) = rows
    assert row["naive_s"] is None and row["naive_over_library_time"] is None
    assert row["note"].startswith("naive skipped: would need ")
    assert row["library_s"] > 0 and row["floor_s"] > 0
    assert "naive skipped: would need" in (tmp_path / "results_cpu.md").read_text()


@pytest.mark.slow
def test_a_failing_compile_is_reported_in_the_row(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_compile(fn: object, **kwargs: object) -> object:
        def call(*args: object, **kw: object) -> object:
            raise RuntimeError("inductor exploded")

        return call

    monkeypatch.setattr(bench.torch, "compile", broken_compile)
    rows = bench.main(
        [
            *("--grid", "tiny", "--out", str(tmp_path), "--warmup", "0", "--repeats", "1"),
            *("--dtype", "float32", "--compile", "on", "--only", "sequence"),
        ]
    )
    (row,) = rows
    assert row["compile"] == "on"
    assert row["note"] == "compile failed: RuntimeError: inductor exploded"
    assert row["library_s"] is None and row["naive_s"] > 0


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_naive_matches_the_test_reference(granularity: str) -> None:
    """The baseline is the estimate of docs/math.md: it equals tests/reference.py in float64."""
    case = Case(granularity, 6, 5, 3, dtype="float64")
    means, stds, mask, clean, noisy = make_inputs(case, torch.device("cpu"), seed=4)
    mask = mask.clone()
    mask[1, 2:] = False
    value = naive_mutual_information_sub_batch(
        means, stds, mask, clean, noisy, granularity=granularity
    )
    expected = reference.mutual_information_sub_batch(
        means, stds, mask, clean, noisy, granularity=granularity
    ).value
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(value, [means, stds, clean, noisy])
    expected_grads = torch.autograd.grad(expected, [means, stds, clean, noisy])
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_the_script_is_a_thin_command_line() -> None:
    """The benchmark is split into small files; no function is longer than 60 lines."""
    for path in sorted(SCRIPT.parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                assert length <= 60, f"{path.name}:{node.name} has {length} lines"
    assert len(SCRIPT.read_text().splitlines()) < 250


def test_naive_matches_a_float64_loop(bench: ModuleType) -> None:
    """The baseline itself is right: one query/component pair at a time, straight from docs/math.md."""
    case = bench.Case("sequence", 4, 5, 3, dtype="float64")
    means, stds, mask, clean, noisy = bench.make_inputs(case, torch.device("cpu"), seed=3)
    mask = mask.clone()
    mask[0, :] = False  # a query with no valid component is left out
    mask[3, 1:] = False
    value = bench.naive_mutual_information_sub_batch(means, stds, mask, clean, noisy)

    y, c, s = noisy.detach(), (clean + means).detach(), stds.detach()
    per_query = []
    for i in range(2):
        logits = []
        for j in range(2, 4):
            active = mask[i] & mask[j]
            if not active.any():
                continue
            own = 0.5 * ((y[i] - c[i]) / s[i]) ** 2 + torch.log(s[i])
            other = 0.5 * ((y[i] - c[j]) / s[j]) ** 2 + torch.log(s[j])
            logits.append(-(other - own)[active].sum())
        if logits:
            stacked = torch.stack(logits)
            per_query.append(-(torch.logsumexp(stacked, 0) - math.log(len(logits))))
    expected = torch.stack(per_query).mean()
    torch.testing.assert_close(value, expected.to(value.dtype), rtol=1e-12, atol=1e-12)
