"""The benchmark script runs on a tiny grid and writes its tables (never asserts on time)."""

from __future__ import annotations

import ast
import csv
import importlib.util
import math
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from benchmarks import bench_versions, compiled_factors, gpu_check, versions_table
from benchmarks.grids import Case, make_inputs
from benchmarks.naive import naive_mutual_information_sub_batch
from benchmarks.timing import calls, fastest, rebuilt, time_step
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
    rows = bench.main(["--grid", "tiny", "--out", str(tmp_path), "--min-run-time", "0"])
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
            *("--grid", "tiny", "--out", str(tmp_path), "--min-run-time", "0"),
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
            *("--grid", "tiny", "--out", str(tmp_path), "--min-run-time", "0"),
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


def test_time_step_runs_the_timer_with_its_own_threads() -> None:
    """Timer.blocked_autorange sets the torch threads of the timed calls and restores them."""
    seen: list[int] = []
    before = torch.get_num_threads()
    measurement = time_step(lambda: seen.append(torch.get_num_threads()), min_run_time=0.0)
    assert set(seen) == {1} and len(seen) >= 2  # the block-size call, then a timed block
    assert torch.get_num_threads() == before
    assert calls(measurement) >= 1 and fastest(measurement) <= measurement.median
    copy = rebuilt(
        measurement.raw_times,
        measurement.number_per_run,
        label="l",
        sub_label="s",
        description="d",
        num_threads=1,
    )
    assert copy.median == measurement.median and copy.times == measurement.times


def _record(checkout: str, shape: str, seconds: list[float], floor: float, peak: float) -> dict:
    return {
        "checkout": checkout,
        "commit": checkout[:3],
        "shape": shape,
        "peak_mib": peak,
        "library": {"raw_times": seconds, "number_per_run": 1},
        "floor": {"raw_times": [floor], "number_per_run": 1},
    }


def test_versions_table_keeps_each_checkouts_fastest_round_and_ratios_to_the_first() -> None:
    records = [
        _record("base", "token,4,8,16", [4.0, 4.0], 2.0, 100.0),
        _record("new", "token,4,8,16", [3.0, 3.0, 3.0], 1.0, 50.0),
        _record("new", "token,4,8,16", [1.0, 9.0, 2.0], 0.5, 52.0),  # median 2: the best round
        {"checkout": "new", "shape": "sequence,4,8,16", "error": "RuntimeError: boom"},
        _record("base", "sequence,4,8,16", [1.0], 1.0, 10.0),
    ]
    best = versions_table.best_rounds(records)
    assert best[("token,4,8,16", "new")].library.median == 2.0
    assert best[("token,4,8,16", "new")].rounds == 2
    lines = versions_table.markdown_table(records).splitlines()
    assert lines[0].startswith("| shape | checkout | s | GEMM floor s | s / floor |")
    base, new, failed = lines[2], lines[3], lines[5]
    assert base.split(" | ")[4:8] == ["2.00x", "1.00x", "100", "1.00x"]
    # 2 s over its own floor of 0.5 s; 0.5x the baseline's time; the peak of that round, the range
    assert new.split(" | ")[4:8] == ["4.00x", "0.50x", "52.0 (50.0-52.0)", "0.52x"]
    assert "failed: RuntimeError: boom" in failed
    versions_table.compare_tables(records)  # prints a torch.utils.benchmark.Compare


@pytest.mark.slow
def test_versions_measures_two_checkouts_in_subprocesses_and_reloads(tmp_path: Path) -> None:
    """Both checkouts are this repository: the script runs (a block budget given on the second
    shape), saves and reloads its records."""
    saved = tmp_path / "runs.json"
    root = str(SCRIPT.parents[1])
    shapes = ["--shapes", "sequence,4,8,16", "token,4,8,16,1", "--min-run-time", "0"]
    records = bench_versions.main(
        ["--checkouts", f"a={root}", f"b={root}", *shapes, "--rounds", "2", "--json", str(saved)]
    )
    # each round starts one checkout later
    assert [(r["shape"], r["checkout"]) for r in records] == [
        (shape, name) for shape in ("sequence,4,8,16", "token,4,8,16,1") for name in "abba"
    ]
    for record in records:
        assert "error" not in record, record
        assert record["peak_mib"] > 0 and record["threads"] == 1 and not record["huge_pages"]
        assert min(record["library"]["raw_times"]) > 0 and min(record["floor"]["raw_times"]) > 0
    assert bench_versions.main(["--load", str(saved), *shapes]) == records
    only_tokens = bench_versions.main(["--load", str(saved), "--shapes", "token,4,8,16,1"])
    assert only_tokens == records[4:]


def test_versions_reuse_memory_sets_glibc_thresholds() -> None:
    plain = bench_versions._environment(bench_versions._parser().parse_args([]))
    reuse = bench_versions._environment(bench_versions._parser().parse_args(["--reuse-memory"]))
    assert plain.get("MALLOC_MMAP_THRESHOLD_") == os.environ.get("MALLOC_MMAP_THRESHOLD_")
    assert reuse["MALLOC_MMAP_THRESHOLD_"] == str(4 << 30)
    assert reuse["MALLOC_TRIM_THRESHOLD_"] == str(16 << 30)


@pytest.mark.slow
def test_versions_interleaves_the_calls_of_live_processes(tmp_path: Path) -> None:
    """``--interleave``: one process per checkout, three calls each of the library and of the
    floor, taken in turn; the records load and print like the rounds'."""
    saved = tmp_path / "runs.json"
    root = str(SCRIPT.parents[1])
    shapes = ["--shapes", "sequence,4,8,16", "token,4,8,16,1"]
    records = bench_versions.main(
        [
            "--checkouts",
            f"a={root}",
            f"b={root}",
            *shapes,
            "--interleave",
            "3",
            "--reuse-memory",
            "--json",
            str(saved),
        ]
    )
    assert [(r["shape"], r["checkout"]) for r in records] == [
        (shape, name) for shape in ("sequence,4,8,16", "token,4,8,16,1") for name in "ab"
    ]
    for record in records:
        assert record["interleaved"] == 3 and record["peak_mib"] > 0 and record["reuse_memory"]
        for part in ("library", "floor"):
            times = record[part]["raw_times"]
            assert len(times) == 3 and min(times) > 0
    assert bench_versions.main(["--load", str(saved), *shapes]) == records


@pytest.mark.slow
def test_compiled_factors_benchmark_measures_both_paths(capsys: pytest.CaptureFixture[str]) -> None:
    """``compiled_factors.py`` times the eager and the compiled factors and the floor in turn,
    and their gradients agree."""
    records = compiled_factors.main(["--shapes", "sequence,4,8,16", "token,4,8,16", "--calls", "2"])
    assert [r["shape"] for r in records] == ["sequence,4,8,16", "token,4,8,16"]
    for record in records:
        assert record["first"] > 0 and record["difference"] < 1e-4
        assert all(len(t) == 2 and min(t) > 0 for t in record["times"].values())
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # the header and the two shapes


def test_gpu_check_without_cuda_says_so_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_check.main([]) == gpu_check.NO_CUDA_EXIT
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("gpu_check: no CUDA device here")


def test_gpu_check_dry_run_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """The CUDA script's logic on tiny CPU shapes: streaming against reference, every estimator
    that takes kernel=, both dtypes; time and ATen operations at the two timing shapes."""
    assert gpu_check.main(["--device", "cpu", "--tiny", "--min-run-time", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| kind | case | dtype | measured | limit | ok |")
    checked = [line for line in out.splitlines() if line.startswith("| accuracy") and "yes" in line]
    assert len(checked) >= 2 * 2 * 6  # granularities x dtypes x estimators with kernel=
    assert out.count("| time | streaming ") == 4 and out.count("ATen operations per call") == 4
    assert "0 of " in out.splitlines()[-1]


def test_gpu_check_flags_a_path_that_disagrees_with_the_reference() -> None:
    inputs = make_inputs(Case("token", 4, 8, 16), torch.device("cpu"), seed=3)

    def estimator(x, kernel):  # type: ignore[no-untyped-def]
        value = gpu_check.F.mutual_information_sub_batch(*x, granularity="token", kernel=kernel)
        return value * (1.001 if kernel != "reference" else 1.0)

    measured, ok = gpu_check._compare(estimator, inputs, "streaming", torch.float32)
    assert not ok and measured.startswith("values ")
    _, ok = gpu_check._compare(estimator, inputs, "streaming", torch.bfloat16)
    assert ok  # 1e-3 is within the bfloat16 tolerance


def test_gpu_check_errors_count_non_finite_entries() -> None:
    want = torch.tensor([1.0, float("inf"), 3.0])
    assert gpu_check.value_error(want.clone(), want, 1e-4) == 0.0
    assert gpu_check.value_error(torch.tensor([1.0, 2.0, 3.0]), want, 1e-4) == float("inf")
    assert gpu_check.value_error(torch.tensor([1.0, float("inf"), 3.1]), want, 1e-2) > 1
    assert gpu_check.grad_error(torch.tensor([1.0, float("nan")]), torch.ones(2)) == float("inf")
    assert gpu_check.grad_error(
        torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])
    ) == pytest.approx(4 / 3)
