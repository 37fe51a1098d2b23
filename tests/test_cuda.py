"""The same contract on a CUDA device (skipped where there is none): values, gradients, devices."""

from __future__ import annotations

import pytest
import torch

from mi_losses.functional import (
    gaussian_entropy_log_loss,
    gaussian_mixture_entropy,
    mutual_information_sub_batch,
    mutual_information_sub_batch_estimate,
    pairwise_square_mahalanobis_distance,
)
from tests import reference as ref
from tests.helpers import MI_ARG_ORDER, make_entropy_inputs, make_inputs, make_mask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = "cuda"


def _to(inputs: dict[str, torch.Tensor], device: str, requires_grad: bool = False) -> dict:
    return {k: v.detach().to(device).requires_grad_(requires_grad) for k, v in inputs.items()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("combine", [True, False])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("pattern", ["none", "empty_rows", "one_hot", "all_empty"])
def test_mi_on_cuda_matches_reference(pattern, granularity, combine, symmetric, dtype) -> None:
    b, s, e = 8, 5, 6
    cpu_inputs = make_inputs(b, s, e, seed=120, dtype=dtype)
    mask = make_mask(pattern, b, s, seed=121)
    kwargs = {
        "granularity": granularity,
        "symmetric": symmetric,
        "combine_noise_masks_for_mutual_information_sub_batches": combine,
    }
    cuda_mask = None if mask is None else mask.to(CUDA)
    estimate = mutual_information_sub_batch_estimate(
        noise_mask=cuda_mask, **_to(cpu_inputs, CUDA), **kwargs
    )
    assert estimate.value.device.type == CUDA
    assert estimate.value.dtype == dtype
    expected = ref.mutual_information_sub_batch(noise_mask=mask, **cpu_inputs, **kwargs)
    tol = {"rtol": 1e-9, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(estimate.value.double().cpu(), expected.value.detach(), **tol)
    assert int(estimate.num_queries) == expected.num_queries
    for key in ref.MI_COMPONENT_KEYS:
        torch.testing.assert_close(
            estimate.components[key].double().cpu(), expected.components[key], **tol
        )


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_mi_gradients_on_cuda_match_reference(granularity) -> None:
    b, s, e = 6, 3, 4
    cpu_inputs = make_inputs(b, s, e, seed=122, requires_grad=True)
    mask = make_mask("empty_rows", b, s, seed=123)
    cuda_inputs = _to(cpu_inputs, CUDA, requires_grad=True)
    value = mutual_information_sub_batch(
        noise_mask=mask.to(CUDA), granularity=granularity, symmetric=True, **cuda_inputs
    )
    value.backward()
    expected = ref.mutual_information_sub_batch(
        noise_mask=mask, granularity=granularity, symmetric=True, **cpu_inputs
    )
    expected.value.backward()
    for name in MI_ARG_ORDER:
        grad = cuda_inputs[name].grad
        assert grad is not None and grad.device.type == CUDA, name
        torch.testing.assert_close(grad.cpu(), cpu_inputs[name].grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("regime", ["common_offset", "large_spread"])
def test_float32_hard_regime_on_cuda(regime) -> None:
    m, n, s, e = 64, 48, 8, 32
    g = torch.Generator().manual_seed(124)
    if regime == "common_offset":
        queries = 100.0 + torch.randn(m, s, e, generator=g, dtype=torch.float64)
        centres = 100.0 + torch.randn(n, s, e, generator=g, dtype=torch.float64)
    else:
        queries = 100.0 * torch.randn(m, s, e, generator=g, dtype=torch.float64)
        centres = 100.0 * torch.randn(n, s, e, generator=g, dtype=torch.float64)
        queries[:n] = centres + torch.randn(n, s, e, generator=g, dtype=torch.float64)
    stds = 0.5 + torch.rand(n, s, e, generator=g, dtype=torch.float64)
    query_mask = torch.rand(m, s, generator=g) < 0.7
    q32, c32, s32 = queries.float(), centres.float(), stds.float()
    got = pairwise_square_mahalanobis_distance(
        q32.to(CUDA), c32.to(CUDA), s32.to(CUDA), query_mask.to(CUDA)
    )
    expected = ref.pairwise_square_mahalanobis_distance(q32, c32, s32, query_mask)
    torch.testing.assert_close(got.double().cpu(), expected, rtol=1e-4, atol=1e-4)

    inputs = make_inputs(
        16,
        s,
        e,
        seed=125,
        dtype=torch.float32,
        offset=100.0 if regime == "common_offset" else 0.0,
        clean_scale=1.0 if regime == "common_offset" else 100.0,
    )
    mask = make_mask("random", 16, s, seed=126)
    value = mutual_information_sub_batch(
        noise_mask=mask.to(CUDA), granularity="token", **_to(inputs, CUDA)
    )
    expected_mi = ref.mutual_information_sub_batch(noise_mask=mask, granularity="token", **inputs)
    torch.testing.assert_close(
        value.double().cpu(), expected_mi.value.detach(), rtol=1e-4, atol=1e-4
    )


def test_entropy_and_gaussian_entropy_on_cuda() -> None:
    inputs = make_entropy_inputs(5, 7, 3, 4, seed=127)
    mask = make_mask("random", 5, 3, seed=128)
    component_mask = make_mask("random", 7, 3, seed=129)
    value = gaussian_mixture_entropy(
        **_to(inputs, CUDA),
        mask=mask.to(CUDA),
        component_mask=component_mask.to(CUDA),
        granularity="token",
    )
    expected = ref.gaussian_mixture_entropy(
        **inputs, mask=mask, component_mask=component_mask, granularity="token"
    )
    torch.testing.assert_close(value.cpu(), expected.value.detach(), rtol=1e-9, atol=1e-10)
    stds = inputs["stds"]
    loss = gaussian_entropy_log_loss(stds.to(CUDA), component_mask.to(CUDA))
    expected_loss = ref.gaussian_entropy_log_loss(stds, component_mask)
    torch.testing.assert_close(loss.cpu(), expected_loss, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", [*MI_ARG_ORDER, "noise_mask"])
def test_mixed_cpu_and_cuda_inputs_raise(name) -> None:
    kwargs: dict = _to(make_inputs(4, 3, 2, seed=130), CUDA)
    kwargs["noise_mask"] = torch.ones(4, 3, dtype=torch.bool, device=CUDA)
    kwargs[name] = kwargs[name].cpu()
    with pytest.raises(ValueError, match=name):
        mutual_information_sub_batch(**kwargs)
