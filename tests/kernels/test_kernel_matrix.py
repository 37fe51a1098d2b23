"""Every kernel path on the test matrix: values, components and every gradient of each
estimator that takes ``kernel`` equal the float64 evaluation of docs/math.md.

The Triton path runs here only under ``TRITON_INTERPRET=1`` (its kernels interpreted on the
CPU); ``test_triton_on_the_matrix`` starts that run in a subprocess.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mi_losses.functional as F
from mi_losses.options import KernelOptions
from tests.harness import Case, Data, Entry, Variant, grads
from tests.registry import entry_variants

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
KERNELS = ("triton",) if INTERPRETED else ("reference", "streaming")


def _takes_kernel(entry: Entry, variant: Variant) -> bool:
    return "kernel" in inspect.signature(getattr(F, entry.name)).parameters


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("entry", "variant"), entry_variants(_takes_kernel))
def test_kernel_matches_reference(entry: Entry, variant: Variant, kernel: str) -> None:
    case = entry.case(variant, Data(seed=31))
    # A small budget makes the streaming and Triton paths use several blocks.
    budget = KernelOptions().max_block_bytes if kernel == "reference" else 256
    options = KernelOptions(kernel=kernel, max_block_bytes=budget)  # type: ignore[arg-type]
    leaves = case.to(torch.float64, requires_grad=True)
    outputs = entry.evaluate(
        Case(leaves.tensors, leaves.masks, {**leaves.options, "kernel": options})
    )
    ref_leaves = case.to(torch.float64, requires_grad=True)
    expected = entry.reference(ref_leaves)
    for key, want in expected.items():
        torch.testing.assert_close(
            outputs[key].detach().double(),
            want.detach(),
            rtol=1e-9,
            atol=1e-10,
            msg=lambda m, k=key: f"{kernel} {k}: {m}",
        )
    found = grads(outputs["value"], list(leaves.tensors.values()))
    wanted = grads(expected["value"], list(ref_leaves.tensors.values()))
    for name, got, want in zip(case.tensors, found, wanted, strict=True):
        torch.testing.assert_close(
            got, want, rtol=1e-8, atol=1e-10, msg=lambda m, n=name: f"{kernel} d/d{n}: {m}"
        )


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="already the interpreted run")
def test_triton_on_the_matrix() -> None:
    """The same matrix with ``kernel="triton"``, kernels interpreted on the CPU."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-x",
        __file__,
        "-k",
        "test_kernel_matches_reference",
    ]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
