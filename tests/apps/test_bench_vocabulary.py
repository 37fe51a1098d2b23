"""The vocabulary benchmark runs on tiny shapes and reports its row (never asserts on time)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_vocabulary.py"


def test_tiny_run_prints_a_row(capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_vocabulary", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_vocabulary"] = module
    spec.loader.exec_module(module)
    row = module.main(["--tokens", "32", "--vocab", "100", "--dim", "8", "--chunk", "30"])
    assert (row["N"], row["V"], row["E"], row["chunk"]) == (32, 100, 8, 30)
    assert row["library s"] > 0 and row["matmul floor s"] > 0 and row["peak extra MiB"] > 0
    assert "| N | V | E | chunk |" in capsys.readouterr().out
