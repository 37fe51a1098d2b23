"""Defects an adversarial probe found outside the tests (issue 25), one test each.

- values that overflow float32 (stds ``1e-20``, ``1e-40``) give ``inf`` and gradients without
  NaN on every path (the Triton path's case is in ``tests/kernels/triton_cases.py``);
- ``symmetric=True`` is the mean over the valid queries of both directions (MATH.md: ``I`` is
  the mean over valid queries), so ``value == per_query.sum() / num_queries``;
- under ``torch.compile`` the float64 accuracy fallback still runs (near-duplicates);
- ``torch.compile(fullgraph=True)`` fails with a message that says what to pass, and works
  once it is passed (also with ``kernel="streaming"``).
"""

from __future__ import annotations

import pytest
import torch

import mi_losses.functional as F
from mi_losses.options import KernelOptions
from tests import reference as ref


def _overflowing(std: float) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, generator=g)
    mu = 0.3 * torch.randn(4, 3, 5, generator=g)
    return x, mu, torch.full_like(x, std).requires_grad_()


@pytest.mark.parametrize("kernel", ["reference", "streaming"])
@pytest.mark.parametrize("std", [1e-20, 1e-40])
def test_overflow_gives_inf_never_nan(kernel: str, std: float) -> None:
    x, mu, sd = _overflowing(std)
    mi = F.mutual_information_sub_batch(mu, sd, None, x, x + mu, symmetric=True, kernel=kernel)
    (mi_grad,) = torch.autograd.grad(mi, sd)
    entropy = F.gaussian_mixture_entropy(x, x + mu, mu, sd, None, kernel=kernel)
    (entropy_grad,) = torch.autograd.grad(entropy, sd)
    assert mi == torch.inf and not entropy.isnan()
    assert not mi_grad.isnan().any() and not entropy_grad.isnan().any()
    assert mi_grad.isinf().any()  # the float64 gradient overflows float32 there


def test_overflow_gradient_is_the_float64_one_rounded() -> None:
    """Where the float32 value overflows, the gradient is the float64 one rounded to float32
    (one rounding per input, not one per direction: no ``inf - inf``)."""
    x, mu, sd = _overflowing(1e-20)
    value = F.mutual_information_sub_batch(mu, sd, None, x, x + mu, symmetric=True)
    (grad,) = torch.autograd.grad(value, sd)
    wide = [t.detach().double() for t in (x, mu, sd)]
    wide[2].requires_grad_()
    exact = F.mutual_information_sub_batch(
        wide[1], wide[2], None, wide[0], (x + mu).double(), symmetric=True
    )
    (exact_grad,) = torch.autograd.grad(exact, wide[2])
    assert torch.isfinite(exact_grad).all()
    torch.testing.assert_close(grad, exact_grad.float(), rtol=1e-4, atol=0.0)


def _masked_second_half() -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    mu = 0.2 * torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    sd = 0.5 + torch.rand(4, 5, 3, generator=g, dtype=torch.float64)
    y = x + mu + sd * torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 5, generator=g) < 0.8
    mask[3] = False  # one sequence of the second half: fewer valid queries there
    mask[0, 0] = mask[2, 0] = True
    return (mu, sd, x, y), mask


@pytest.mark.parametrize("granularity", ["token", "sequence"])
def test_symmetric_is_the_mean_over_all_valid_queries(granularity: str) -> None:
    (mu, sd, x, y), mask = _masked_second_half()
    losses: dict[str, torch.Tensor] = {}
    estimate = F.mutual_information_sub_batch_estimate(
        mu, sd, mask, x, y, granularity=granularity, symmetric=True
    )
    value = F.mutual_information_sub_batch(
        mu, sd, mask, x, y, losses=losses, granularity=granularity, symmetric=True
    )
    assert estimate.per_query is not None
    pooled = estimate.per_query.sum() / estimate.num_queries
    torch.testing.assert_close(value, pooled)
    forward = F.mutual_information_sub_batch_estimate(mu, sd, mask, x, y, granularity=granularity)
    swapped = (t.roll(2, 0) for t in (mu, sd, mask, x, y))
    backward = F.mutual_information_sub_batch_estimate(*swapped, granularity=granularity)
    assert forward.num_queries != backward.num_queries  # the weighting matters here
    assert not torch.isclose(value, (forward.value + backward.value) / 2)
    expected = ref.mutual_information_sub_batch(
        mu, sd, mask, x, y, granularity=granularity, symmetric=True
    )
    torch.testing.assert_close(value, expected.value)
    for key, want in expected.components.items():
        torch.testing.assert_close(losses[key], want, msg=key)


def _near_duplicates() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 16, generator=g)
    sd = torch.full_like(x, 1e-5)
    return x, x + sd * torch.randn(8, 4, 16, generator=g), torch.zeros_like(x), sd


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_results_keep_the_float64_fallback(backend: str, fresh_dynamo: None) -> None:
    x, y, mu, sd = _near_duplicates()
    unchecked = F.gaussian_mixture_entropy(
        x, y, mu, sd, None, kernel=KernelOptions(accuracy_check=False)
    )
    exact = F.gaussian_mixture_entropy(x.double(), y.double(), mu.double(), sd.double(), None)
    assert abs(unchecked.item() - exact.item()) > 100  # the fallback is needed here
    compiled = torch.compile(F.gaussian_mixture_entropy, backend=backend)
    sd_ = sd.clone().requires_grad_()
    value = compiled(x, y, mu, sd_, None)
    torch.testing.assert_close(value.double(), exact, rtol=1e-5, atol=1e-4)
    (grad,) = torch.autograd.grad(value, sd_)
    sd64 = sd.double().requires_grad_()
    exact_value = F.gaussian_mixture_entropy(x.double(), y.double(), mu.double(), sd64, None)
    (exact_grad,) = torch.autograd.grad(exact_value, sd64)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-4, atol=1e-4 * 1e5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "pass validate_args=False"),
        ({"validate_args": False}, "accuracy_check=False"),
        ({"validate_args": False, "kernel": "streaming"}, "accuracy_check=False"),
    ],
)
def test_fullgraph_says_what_to_pass(options: dict, message: str, fresh_dynamo: None) -> None:  # type: ignore[type-arg]
    (mu, sd, x, y), _ = _masked_second_half()

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return F.mutual_information_sub_batch(*tensors, **options)

    with pytest.raises(Exception, match=message):
        torch.compile(fn, fullgraph=True, backend="aot_eager")(mu, sd, None, x, y)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["auto", "reference", "streaming"])
def test_fullgraph_runs_once_told(kernel: str, fresh_dynamo: None) -> None:
    """With ``validate_args=False`` and ``accuracy_check=False`` every path compiles whole, the
    same tensor passed twice included (``x`` as clean and noisy, the masks combined)."""
    (mu, sd, x, _), mask = _masked_second_half()
    options = KernelOptions(kernel=kernel, accuracy_check=False)  # type: ignore[arg-type]

    def fn(mu: torch.Tensor, sd: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.mutual_information_sub_batch(
            mu, sd, mask, x, x, granularity="token", validate_args=False, kernel=options
        )

    tensors = [t.float().requires_grad_() for t in (mu, sd, x)]
    value = torch.compile(fn, fullgraph=True, backend="aot_eager")(*tensors)
    eager_tensors = [t.detach().clone().requires_grad_() for t in tensors]
    eager = fn(*eager_tensors)
    torch.testing.assert_close(value, eager)
    for got, want in zip(
        torch.autograd.grad(value, tensors), torch.autograd.grad(eager, eager_tensors), strict=True
    ):
        torch.testing.assert_close(got, want)
