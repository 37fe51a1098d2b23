"""The loss modules give exactly the functional results and reject bad options at construction."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import typing

import pytest
import torch

from mi_losses import (
    ComponentLossesDict,
    Estimate,
    GatherOptions,
    GaussianMixtureEntropy,
    MahalanobisDistance,
    MixtureLossModule,
    MutualInformationLoss,
    SubBatchMutualInformation,
    keys,
)
from mi_losses import (
    losses as loss_modules,
)
from mi_losses.functional import (
    gaussian_mixture_entropy,
    gaussian_mixture_entropy_estimate,
    mutual_information_sub_batch,
    mutual_information_sub_batch_estimate,
    square_mahalanobis_distance,
)

UNIT_SCALE = {"nats": 1.0, "bits": 1.0 / math.log(2.0)}


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """A small float64 batch of the four ``(B, S, E)`` tensors with a padded noise mask."""
    generator = torch.Generator().manual_seed(0)
    b, s, e = 6, 5, 3
    clean = torch.randn(b, s, e, generator=generator, dtype=torch.float64)
    means = 0.1 * torch.randn(b, s, e, generator=generator, dtype=torch.float64)
    stds = 0.5 + torch.rand(b, s, e, generator=generator, dtype=torch.float64)
    noisy = clean + means + stds * torch.randn(b, s, e, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([5, 3, 4, 2, 5, 1])
    noise_mask = torch.arange(s)[None] < lengths[:, None]
    return {
        "clean": clean,
        "means": means,
        "stds": stds,
        "noisy": noisy,
        "noise_mask": noise_mask,
    }


def assert_components_scaled(
    got: ComponentLossesDict, expected: ComponentLossesDict, scale: float
) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert not got[key].requires_grad
        torch.testing.assert_close(got[key], value * scale, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize(
    ("combine", "granularity", "symmetric", "units"),
    list(itertools.product([True, False], ["sequence", "token"], [False, True], ["nats", "bits"])),
)
def test_mutual_information_module_equals_functional(
    batch: dict[str, torch.Tensor], combine: bool, granularity: str, symmetric: bool, units: str
) -> None:
    args = (batch["means"], batch["stds"], batch["noise_mask"], batch["clean"], batch["noisy"])
    module = SubBatchMutualInformation(
        combine_noise_masks_for_mutual_information_sub_batches=combine,
        granularity=granularity,
        symmetric=symmetric,
        units=units,
    )
    value = module(*args)

    expected = mutual_information_sub_batch_estimate(
        *args, combine, granularity=granularity, symmetric=symmetric
    )
    losses: ComponentLossesDict = {}
    plain = mutual_information_sub_batch(
        *args, combine, losses, granularity=granularity, symmetric=symmetric
    )
    scale = UNIT_SCALE[units]
    torch.testing.assert_close(value, expected.value * scale, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(plain, expected.value, rtol=1e-12, atol=0.0)
    assert_components_scaled(module.component_losses, expected.components, scale)
    assert_components_scaled(module.component_losses, losses, scale)
    assert torch.equal(module.last_num_queries, expected.num_queries)
    torch.testing.assert_close(
        module.component_losses["mutual_information_loss"], value.detach(), rtol=1e-10, atol=1e-12
    )


def test_mutual_information_module_gradient_matches_functional(
    batch: dict[str, torch.Tensor],
) -> None:
    stds = batch["stds"].clone().requires_grad_(True)
    args = (batch["means"], stds, batch["noise_mask"], batch["clean"], batch["noisy"])
    (grad_module,) = torch.autograd.grad(SubBatchMutualInformation(units="bits")(*args), stds)
    (grad_functional,) = torch.autograd.grad(mutual_information_sub_batch(*args), stds)
    torch.testing.assert_close(grad_module, grad_functional / math.log(2.0))


@pytest.mark.parametrize(
    ("granularity", "reduction", "units", "component_mask"),
    list(
        itertools.product(["sequence", "token"], ["mean", "sum"], ["nats", "bits"], [False, True])
    ),
)
def test_mixture_entropy_module_equals_functional(
    batch: dict[str, torch.Tensor],
    granularity: str,
    reduction: str,
    units: str,
    component_mask: bool,
) -> None:
    # Queries: the noisy first half; components: the second half (a different batch).
    queries, components = slice(0, 3), slice(3, 6)
    args = (
        batch["clean"][components],
        batch["noisy"][queries],
        batch["means"][components],
        batch["stds"][components],
        batch["noise_mask"][queries],
    )
    kwargs = {
        "component_mask": batch["noise_mask"][components] if component_mask else None,
        "granularity": granularity,
    }
    clean, noisy, means, stds, mask = args
    module = GaussianMixtureEntropy(granularity=granularity, reduction=reduction, units=units)
    value = module(means, stds, mask, clean, noisy, component_mask=kwargs["component_mask"])

    expected = gaussian_mixture_entropy_estimate(means, stds, mask, clean, noisy, **kwargs)
    losses: ComponentLossesDict = {}
    plain = gaussian_mixture_entropy(*args, losses, **kwargs)
    scale = UNIT_SCALE[units]
    factor = expected.num_queries if reduction == "sum" else 1
    torch.testing.assert_close(value, expected.value * scale * factor, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(plain, expected.value, rtol=1e-12, atol=0.0)
    assert_components_scaled(module.component_losses, expected.components, scale)
    assert_components_scaled(module.component_losses, losses, scale)
    assert torch.equal(module.last_num_queries, expected.num_queries)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("masked", [False, True])
def test_mahalanobis_module_equals_functional(
    batch: dict[str, torch.Tensor], reduction: str, masked: bool
) -> None:
    mask = batch["noise_mask"] if masked else None
    args = (batch["clean"], batch["noisy"], batch["stds"])
    value = MahalanobisDistance(reduction=reduction)(*args, mask)
    distances = square_mahalanobis_distance(*args, mask)
    expected = {"mean": distances.mean(), "sum": distances.sum(), "none": distances}[reduction]
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0.0)


def test_mahalanobis_module_keeps_the_per_sample_mean(batch: dict[str, torch.Tensor]) -> None:
    module = MahalanobisDistance(reduction="sum")
    module(batch["clean"], batch["noisy"], batch["stds"], batch["noise_mask"])
    distances = square_mahalanobis_distance(
        batch["clean"], batch["noisy"], batch["stds"], batch["noise_mask"]
    )
    torch.testing.assert_close(
        module.component_losses["square_mahalanobis_distance"], distances.mean()
    )
    assert int(module.last_num_queries) == batch["clean"].shape[0]


def test_component_losses_are_empty_before_the_first_call() -> None:
    module = SubBatchMutualInformation()
    assert module.component_losses == {}
    assert int(module.last_num_queries) == 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: MahalanobisDistance(reduction="avg"),
            "MahalanobisDistance: reduction must be one of 'mean', 'sum', 'none', got 'avg'",
        ),
        (
            lambda: GaussianMixtureEntropy(granularity="word"),
            "GaussianMixtureEntropy: granularity must be one of 'sequence', 'token', got 'word'",
        ),
        (
            lambda: GaussianMixtureEntropy(reduction="avg"),
            "GaussianMixtureEntropy: reduction must be one of 'mean', 'sum', 'none', got 'avg'",
        ),
        (
            lambda: GaussianMixtureEntropy(units="nat"),
            "GaussianMixtureEntropy: units must be one of 'nats', 'bits', got 'nat'",
        ),
        (
            lambda: SubBatchMutualInformation(units="bit"),
            "SubBatchMutualInformation: units must be one of 'nats', 'bits', got 'bit'",
        ),
        (
            lambda: SubBatchMutualInformation(granularity="tokens"),
            "SubBatchMutualInformation: granularity must be one of 'sequence', 'token', "
            "got 'tokens'",
        ),
        (
            lambda: SubBatchMutualInformation(
                combine_noise_masks_for_mutual_information_sub_batches="yes"
            ),
            "SubBatchMutualInformation: combine_noise_masks_for_mutual_information_sub_batches must be a bool (true or false), "
            "got 'yes'",
        ),
        (
            lambda: SubBatchMutualInformation(symmetric=1),
            "SubBatchMutualInformation: symmetric must be a bool (true or false), got 1",
        ),
    ],
)
def test_bad_options_fail_at_construction(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as error:
        build()
    assert str(error.value) == message


def test_modules_hold_plain_yaml_values() -> None:
    module = SubBatchMutualInformation(granularity="token", symmetric=True, units="bits")
    assert (
        module.combine_noise_masks_for_mutual_information_sub_batches,
        module.granularity,
        module.symmetric,
        module.units,
    ) == (
        True,
        "token",
        True,
        "bits",
    )
    assert "granularity='token'" in repr(module)
    assert list(module.parameters()) == [] and list(module.buffers()) == []


LOSS_MODULES = [
    getattr(loss_modules, name)
    for name in loss_modules.__all__
    if name not in {"ComponentLossModule", "MixtureLossModule"}
    and isinstance(getattr(loss_modules, name), type)
    and issubclass(getattr(loss_modules, name), torch.nn.Module)
]


@pytest.mark.parametrize("module", LOSS_MODULES, ids=lambda module: module.__name__)
def test_every_loss_module_shows_a_typed_forward(module: type[torch.nn.Module]) -> None:
    """Named, annotated tensors (what an editor and the API page show), never ``*inputs``."""
    hints = typing.get_type_hints(module.forward)
    parameters = list(inspect.signature(module.forward).parameters.values())[1:]
    assert len(parameters) >= (1 if module is loss_modules.AdversarialPrivacy else 2)  # its batch
    for parameter in parameters:
        assert parameter.kind not in {parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD}
        assert parameter.name in hints, f"{module.__name__}.forward: {parameter.name} untyped"
    assert hints["return"] is torch.Tensor


class _NegativeLogStd(MutualInformationLoss):
    """A user's estimator: only ``estimate`` is written."""

    def estimate(
        self,
        means_tensor: torch.Tensor,
        stds_tensor: torch.Tensor,
        noise_mask: torch.Tensor | None,
        clean_input_embeddings: torch.Tensor,
        noisy_input_embeddings: torch.Tensor,
    ) -> Estimate:
        per_query = -stds_tensor.log().sum((1, 2))
        value = per_query.mean()
        count = torch.tensor(per_query.numel())
        return Estimate(value, {keys.STD_LOG: value.detach()}, count, per_query)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_subclass_writes_estimate_and_forward_does_the_rest(
    batch: dict[str, torch.Tensor], reduction: str
) -> None:
    module = _NegativeLogStd(units="bits", reduction=reduction)
    args = (batch["means"], batch["stds"], batch["noise_mask"], batch["clean"], batch["noisy"])
    per_query = -batch["stds"].log().sum((1, 2)) / math.log(2.0)
    value = module(*args)
    expected = {"mean": per_query.mean(), "sum": per_query.sum(), "none": per_query}[reduction]
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(module.component_losses[keys.STD_LOG], per_query.mean())
    assert int(module.last_num_queries) == 6
    with pytest.raises(NotImplementedError, match="_Plain must implement estimate"):
        type("_Plain", (MutualInformationLoss,), {})()(*args)


@pytest.mark.parametrize("module", [SubBatchMutualInformation, GaussianMixtureEntropy])
def test_gather_options_have_one_set_of_names(module: type[MixtureLossModule]) -> None:
    """A module's plain gather values are ``gather`` and the fields of GatherOptions."""
    fields = {field.name for field in dataclasses.fields(GatherOptions)}
    plain = set(inspect.signature(module).parameters) & {"gather", *fields}
    assert plain == {"gather", *fields} - {"process_group"}  # a group is no YAML value
    loss = module(gather=True, max_gathered_components=3)
    loss.process_group = None
    assert loss.gather_options == GatherOptions(max_gathered_components=3, process_group=None)
    assert module().gather_options is None
