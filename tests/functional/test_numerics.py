"""Numerics of MATH.md: the hard float32 regime, far-apart components, finiteness.

gradcheck and half precision of every function are in ``tests/functional/test_matrix.py``; scales,
near-duplicates and padding in ``tests/functional/test_hardening_numerics.py``.
"""

from __future__ import annotations

import pytest
import torch

from mi_losses.functional import (
    gaussian_mixture_entropy,
    mutual_information_sub_batch,
)
from tests import reference as ref
from tests.helpers import (
    MI_ARG_ORDER,
    make_entropy_inputs,
    make_inputs,
    make_mask,
)

FLAG = "combine_noise_masks_for_mutual_information_sub_batches"
HARD_REGIMES = {
    "common_offset": {"offset": 100.0, "clean_scale": 1.0},  # x = 100 + randn
    "large_spread": {"offset": 0.0, "clean_scale": 100.0},  # x = 100 * randn
}


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("pattern", ["none", "random"])
@pytest.mark.parametrize("regime", list(HARD_REGIMES))
def test_mi_float32_hard_regime(regime, pattern, granularity, symmetric, device) -> None:
    """Centres ~100x the stds: float32 agrees with the float64 evaluation to 1e-4."""
    b, s, e = 16, 4, 8
    inputs = make_inputs(b, s, e, seed=80, dtype=torch.float32, **HARD_REGIMES[regime])
    mask = make_mask(pattern, b, s, seed=81)
    losses: dict[str, torch.Tensor] = {}
    value = mutual_information_sub_batch(
        noise_mask=None if mask is None else mask.to(device),
        losses=losses,
        granularity=granularity,
        symmetric=symmetric,
        **{k: v.to(device) for k, v in inputs.items()},
    )
    assert value.dtype == torch.float32
    assert value.device.type == device.type
    value, losses = value.cpu(), {k: v.cpu() for k, v in losses.items()}
    expected = ref.mutual_information_sub_batch(
        noise_mask=mask, granularity=granularity, symmetric=symmetric, **inputs
    )
    torch.testing.assert_close(value.double(), expected.value.detach(), rtol=1e-4, atol=1e-5)
    scale = max(abs(v.item()) for v in expected.components.values())
    # the identities of MATH.md hold in float32 too, to the same relative accuracy
    entropy = losses[ref.MAHALANOBIS_KEY].double() + losses[ref.LOG_CONSTANTS_KEY].double()
    identity = {"rtol": 1e-4, "atol": 1e-5 * scale}
    torch.testing.assert_close(entropy, losses[ref.ENTROPY_KEY].double(), **identity)
    torch.testing.assert_close(
        entropy + losses[ref.STD_LOG_KEY].double(), value.double().detach(), **identity
    )
    for key in ref.MI_COMPONENT_KEYS:
        torch.testing.assert_close(
            losses[key].double(),
            expected.components[key],
            rtol=1e-4,
            atol=1e-5 * scale,
            msg=lambda m, k=key: f"{k}: {m}",
        )


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("regime", list(HARD_REGIMES))
def test_mixture_entropy_float32_hard_regime(regime, masked, granularity, device) -> None:
    m, n, s, e = 12, 10, 4, 8
    params = HARD_REGIMES[regime]
    inputs = make_entropy_inputs(
        m, n, s, e, seed=82, dtype=torch.float64, clean_scale=params["clean_scale"]
    )
    g = torch.Generator().manual_seed(83)
    # queries near the components' centres, everything shifted by the offset
    centres = inputs["clean_embeddings"] + inputs["means"]
    pick = torch.randint(0, n, (m,), generator=g)
    inputs["transformed_embeddings"] = centres[pick] + inputs["stds"][pick] * torch.randn(
        m, s, e, generator=g, dtype=torch.float64
    )
    inputs["clean_embeddings"] = inputs["clean_embeddings"] + params["offset"]
    inputs["transformed_embeddings"] = inputs["transformed_embeddings"] + params["offset"]
    inputs = {k: v.float() for k, v in inputs.items()}
    mask = make_mask("random", m, s, seed=84) if masked else None
    component_mask = make_mask("random", n, s, seed=85) if masked else None
    kwargs = {"mask": mask, "component_mask": component_mask, "granularity": granularity}
    losses: dict[str, torch.Tensor] = {}
    on_device = {
        k: None if v is None else v.to(device) for k, v in kwargs.items() if k != "granularity"
    }
    value = gaussian_mixture_entropy(
        **{k: v.to(device) for k, v in inputs.items()},
        losses=losses,
        granularity=granularity,
        **on_device,
    )
    assert value.dtype == torch.float32
    assert value.device.type == device.type
    value, losses = value.cpu(), {k: v.cpu() for k, v in losses.items()}
    expected = ref.gaussian_mixture_entropy(**inputs, **kwargs)
    torch.testing.assert_close(value.double(), expected.value.detach(), rtol=1e-4, atol=1e-5)
    scale = max(abs(v.item()) for v in expected.components.values())
    for key in ref.ENTROPY_COMPONENT_KEYS:
        torch.testing.assert_close(
            losses[key].double(),
            expected.components[key],
            rtol=1e-4,
            atol=1e-5 * scale,
            msg=lambda m, k=key: f"{k}: {m}",
        )
    total = sum(losses[k].double() for k in ref.ENTROPY_COMPONENT_KEYS)
    torch.testing.assert_close(total, value.double().detach(), rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_far_apart_components_stay_finite(dtype, granularity) -> None:
    """exp(-r) underflows for every component; logsumexp must keep the value finite."""
    b, s, e = 6, 3, 4
    inputs = make_inputs(b, s, e, seed=95, clean_scale=50.0, std_range=(0.01, 0.02))
    mask = make_mask("empty_rows", b, s, seed=96)
    inputs = {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}
    value = mutual_information_sub_batch(
        noise_mask=mask, granularity=granularity, symmetric=True, **inputs
    )
    if dtype == torch.float32:
        assert torch.isfinite(value)
        value.backward()
        for name in MI_ARG_ORDER:
            assert torch.isfinite(inputs[name].grad).all(), name
        expected = ref.mutual_information_sub_batch(
            noise_mask=mask, granularity=granularity, symmetric=True, **inputs
        )
        torch.testing.assert_close(value.double(), expected.value.detach(), rtol=1e-4, atol=0.0)
    else:
        # the estimate (~1e6 nats) overflows float16 itself; it must be inf, never NaN
        assert not torch.isnan(value)


# One query and two components, float32, found by the hard-regime test above: the squared
# distances are 69007.99 and 69009.58 nats, so the weights are 0.85 / 0.15.
TWO_FAR_QUERY = [
    [-115.05181884765625, 44.498992919921875, -227.7852020263672, 90.0394515991211,
     110.8447494506836, -151.17066955566406, 75.92239379882812, -98.23448181152344],
]  # fmt: skip
TWO_FAR_CENTRES = [
    [-30.55926513671875, -138.7263946533203, -42.12798309326172, -32.803321838378906,
     -82.03082275390625, -45.031497955322266, 20.926284790039062, 51.1134147644043],
    [35.12570571899414, -79.22661590576172, 23.27203941345215, 43.685630798339844,
     49.38760757446289, -109.13088989257812, -8.160780906677246, 127.7482681274414],
]  # fmt: skip
TWO_FAR_STDS = [
    [0.9222927093505859, 0.8614172339439392, 1.2637794017791748, 1.3198846578598022,
     1.4369688034057617, 1.095811128616333, 0.9773930907249451, 0.9727165102958679],
    [1.005307674407959, 1.0513501167297363, 1.173841118812561, 1.0279942750930786,
     1.4961555004119873, 0.8072109222412109, 1.455011010169983, 1.0497941970825195],
]  # fmt: skip


def test_mixture_entropy_components_float32_two_far_components() -> None:
    """The Mahalanobis component is a convex combination of the two distances, so it lies
    between them, and its sum with the log-constants component is H (float32 inputs)."""
    inputs = {
        "clean_embeddings": torch.tensor(TWO_FAR_CENTRES).unsqueeze(1),
        "transformed_embeddings": torch.tensor(TWO_FAR_QUERY).unsqueeze(1),
        "means": torch.zeros(2, 1, 8),
        "stds": torch.tensor(TWO_FAR_STDS).unsqueeze(1),
    }
    distances = ref.pairwise_square_mahalanobis_distance(
        inputs["transformed_embeddings"], inputs["clean_embeddings"], inputs["stds"]
    )[0]
    losses: dict[str, torch.Tensor] = {}
    value = gaussian_mixture_entropy(**inputs, mask=None, losses=losses)
    expected = ref.gaussian_mixture_entropy(**inputs)
    torch.testing.assert_close(value.double(), expected.value.detach(), rtol=1e-4, atol=0.0)
    mahalanobis = losses[ref.MAHALANOBIS_KEY].double()
    tol = 1e-4 * distances.max().item()
    assert distances.min().item() - tol <= mahalanobis.item() <= distances.max().item() + tol
    torch.testing.assert_close(
        mahalanobis, expected.components[ref.MAHALANOBIS_KEY], rtol=1e-4, atol=0.0
    )
    total = mahalanobis + losses[ref.LOG_CONSTANTS_KEY].double()
    torch.testing.assert_close(total, value.double().detach(), rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("std", [1.0, 0.01])
@pytest.mark.parametrize("offset_over_std", [0.0, 100.0])
@pytest.mark.parametrize("spread_over_std", [0.1, 3.0, 30.0])
def test_mi_float32_regime_scan(spread_over_std, offset_over_std, std, granularity) -> None:
    """MI value and components in float32 within 1e-4 relative (or 1e-4 nats) of float64."""
    b, s, e = 8, 2, 16
    inputs = make_inputs(
        b,
        s,
        e,
        seed=int(10 * spread_over_std + offset_over_std),
        dtype=torch.float32,
        offset=offset_over_std * std,
        clean_scale=spread_over_std * std,
        mean_scale=0.3 * std,
        std_range=(0.5 * std, 1.5 * std),
    )
    mask = make_mask("random", b, s, seed=98)
    losses: dict[str, torch.Tensor] = {}
    value = mutual_information_sub_batch(
        noise_mask=mask, losses=losses, granularity=granularity, symmetric=True, **inputs
    )
    expected = ref.mutual_information_sub_batch(
        noise_mask=mask, granularity=granularity, symmetric=True, **inputs
    )
    torch.testing.assert_close(value.double(), expected.value.detach(), rtol=1e-4, atol=1e-4)
    for key in ref.MI_COMPONENT_KEYS:
        torch.testing.assert_close(
            losses[key].double(),
            expected.components[key],
            rtol=1e-4,
            atol=1e-4,
            msg=lambda m, k=key: f"{k}: {m}",
        )
