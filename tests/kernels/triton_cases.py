"""Cases of the Triton path, run by ``test_paths.test_triton_under_the_interpreter`` in a
subprocess with ``TRITON_INTERPRET=1`` (kernels interpreted on the CPU)."""

from __future__ import annotations

import os

import pytest
import torch

from mi_losses.kernels import make_plan, stream
from mi_losses.options import KernelOptions
from tests.kernels.test_paths import _inputs, _naive, _problem, _run

if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("run with TRITON_INTERPRET=1 (see test_paths.py)", allow_module_level=True)
pytest.importorskip("triton")


TRITON_MATRIX = [
    ("sequence", True, True, "random", 3),
    ("sequence", False, False, "random", 0),
    ("token", True, False, "random", 0),
    ("token", False, True, "none", 3),
    ("token", True, True, "random", 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("granularity", "with_own", "symmetric", "pattern", "extra"), TRITON_MATRIX
)
def test_triton_equals_reference(granularity, with_own, symmetric, pattern, extra, dtype) -> None:
    tensors, masks, directions = _problem(granularity, with_own, symmetric, pattern, extra, dtype)
    expected = _run(tensors, masks, directions, with_own, KernelOptions(kernel="reference"))
    options = KernelOptions(kernel="triton", max_block_bytes=1000)  # several backward blocks
    got = _run(tensors, masks, directions, with_own, options)
    tolerance = (
        {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    )
    for value, want in zip([*got[0], *got[1]], [*expected[0], *expected[1]], strict=True):
        assert value.dtype == want.dtype
        torch.testing.assert_close(value, want, **tolerance)


def test_triton_float64_second_derivatives_and_rounding_check() -> None:
    """float64 dots; second derivatives (the backward pass builds a graph through the reference
    path) equal the reference path's; data far from the origin (the rounding check sends the
    call to the float64 fallback)."""
    tensors, masks, directions = _problem("sequence", True, True, "random", 0)

    def hessian_vector(kernel):
        options = KernelOptions(kernel=kernel)
        plan = make_plan(directions, with_own=True, dtype=torch.float64, options=options)
        lse = stream(*tensors, *masks, plan).log_sum_exp
        grads = torch.autograd.grad(
            torch.where(torch.isfinite(lse), lse, 0.0).sum(), tensors, create_graph=True
        )
        penalty = sum((g * g).sum() for g in grads)
        return torch.autograd.grad(penalty, tensors)

    for got, want in zip(hessian_vector("triton"), hessian_vector("reference"), strict=True):
        torch.testing.assert_close(got, want)
    far = _inputs(8, 3, 4, 0, seed=5, dtype=torch.float32, scale=1.0)
    far = [
        (t.detach() + 1e4 if i < 2 else t.detach() * 1e-2).requires_grad_()
        for i, t in enumerate(far)
    ]
    got = _run(far, masks, directions, True, KernelOptions(kernel="triton"))[0][0]
    torch.testing.assert_close(
        got.double(), _naive(far, masks, directions, True), rtol=1e-5, atol=1e-4
    )


def test_triton_overflow_gives_inf_never_nan() -> None:
    """stds of ``1e-20``: the value overflows float32; the gradient has no NaN (issue 25)."""
    import mi_losses.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, generator=g)
    mu = 0.3 * torch.randn(4, 3, 5, generator=g)
    sd = torch.full_like(x, 1e-20).requires_grad_()
    value = F.mutual_information_sub_batch(mu, sd, None, x, x + mu, symmetric=True, kernel="triton")
    (grad,) = torch.autograd.grad(value, sd)
    assert value == torch.inf and not grad.isnan().any() and grad.isinf().any()
