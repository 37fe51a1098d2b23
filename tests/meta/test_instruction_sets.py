"""The numerics tests pass on any x86 CPU, not only on the instruction set of the machine at hand.

PyTorch picks its vectorised kernels by CPU (``ATEN_CPU_CAPABILITY``: ``default``, ``avx2``,
``avx512``): sums, exponentials and reductions round differently on each. A tolerance tuned
on one machine can fail on another. This test runs the numerics tests again with the baseline
kernels (``ATEN_CPU_CAPABILITY=default``, what a CPU without AVX gets) in a subprocess, so that
an instruction-set dependence fails on a developer's machine first, whatever it has; the main
run covers the machine's own (on this project's CI machine: AVX2).

What it runs (``NUMERICS``): the directories whose tests compare values against float64
evaluations, closed forms and statistical bounds, without their slow tests. ``DESELECT`` leaves
out the NaN-in-padding matrix (it checks which entries are read, not how they round: a fifth of
the time) and the cases computed in float64 (a kernel's rounding moves them by about 1e-16
relative, far inside their tolerances; the float32 and half-precision cases are the ones a
tolerance can be tuned on).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NUMERICS = [
    "tests/functional",
    "tests/kernels",
    "tests/modules",
    "tests/noise",
    "tests/metrics",
    "tests/attacks",
    "tests/mechanisms",
]
DESELECT = "not padding_is_never_read and not float64"

_RUN = """
import sys, torch, pytest
capability = torch.backends.cpu.get_cpu_capability()
assert capability == "DEFAULT", f"ATEN_CPU_CAPABILITY=default was not applied: {capability}"
sys.exit(pytest.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_numerics_pass_with_the_baseline_cpu_kernels() -> None:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "PYTHONPATH": str(ROOT)}
    args = ["-q", "-m", "not slow", "-k", DESELECT, "-p", "no:cacheprovider", *NUMERICS]
    result = subprocess.run(
        [sys.executable, "-c", _RUN, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
