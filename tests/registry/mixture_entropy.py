"""Registry entries of ``gaussian_mixture_entropy`` and its ``_estimate`` form."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import torch
from torch import Tensor

import mi_losses.functional as F
from mi_losses import GaussianMixtureEntropy
from tests import reference as ref
from tests.harness import (
    Case,
    Data,
    Entry,
    Outputs,
    Variant,
    bool_mask,
    log_std_magnitude,
    mask_of,
    randn,
)
from tests.helpers import ENTROPY_VOCABULARY

ENTROPY_ARGS = ("clean_embeddings", "transformed_embeddings", "means", "stds")


def _build_entropy(data: Data, variant: Variant) -> Case:
    m, n, s, e = data.sizes or (4, 5, 3, 2)
    g = torch.Generator().manual_seed(data.seed)
    clean = data.clean((n, s, e), g)
    means, stds = data.means((n, s, e), g), data.stds((n, s, e), g)
    centres = clean + means
    if n:  # queries drawn from the mixture itself (near-duplicates of the components)
        pick = torch.randint(0, n, (m,), generator=g)
        transformed = centres[pick] + stds[pick] * randn((m, s, e), g)
    else:
        transformed = data.clean((m, s, e), g)
    tensors = dict(zip(ENTROPY_ARGS, (clean, transformed, means, stds), strict=True))
    masks = {
        "mask": mask_of(variant.masks.get("mask"), m, s, seed=data.seed + 1),
        "component_mask": mask_of(variant.masks.get("component_mask"), n, s, seed=data.seed + 2),
    }
    return Case(tensors, masks, dict(variant.options))


def _entropy_inactive(case: Case) -> dict[str, Tensor]:
    m, s, _ = case.tensors["transformed_embeddings"].shape
    n = case.tensors["clean_embeddings"].shape[0]
    components = ~bool_mask(case.masks["component_mask"], (n, s))
    return {
        "transformed_embeddings": ~bool_mask(case.masks["mask"], (m, s)),
        "clean_embeddings": components,
        "means": components,
        "stds": components,
    }


def _entropy_magnitude(case: Case, reference: Outputs) -> float:
    """Softmax-weighted distances and log-normalisers of the reference."""
    weighted = sum(abs(float(reference[k])) for k in (ref.MAHALANOBIS_KEY, ref.LOG_CONSTANTS_KEY))
    return weighted + log_std_magnitude(case.tensors["stds"])


def _entropy_reference(case: Case) -> Outputs:
    result = ref.gaussian_mixture_entropy(**case.kwargs())
    return {"value": result.value, **result.components}


def _entropy_evaluate(case: Case) -> Outputs:
    losses: dict[str, Tensor] = {}
    value = F.gaussian_mixture_entropy(**case.kwargs(losses=losses))
    return {"value": value, **losses}


def _renamed(case: Case, names: dict[str, str]) -> Case:
    """``case`` with its tensors and masks under other argument names."""
    return Case(
        {names.get(k, k): v for k, v in case.tensors.items()},
        {names.get(k, k): v for k, v in case.masks.items()},
        case.options,
    )


_REFERENCE_NAMES = {new: old for old, new in ENTROPY_VOCABULARY.items()}


def _entropy_estimate_evaluate(case: Case) -> Outputs:
    estimate = F.gaussian_mixture_entropy_estimate(**case.kwargs())
    return {"value": estimate.value, **estimate.components}


def _entropy_module(case: Case) -> Tensor:
    module = GaussianMixtureEntropy(granularity=case.options.get("granularity", "sequence"))
    t = case.tensors
    return module(
        t["means"],
        t["stds"],
        case.masks["mask"],
        t["clean_embeddings"],
        t["transformed_embeddings"],
        component_mask=case.masks["component_mask"],
    )


ENTROPY_VARIANTS = (
    *(
        Variant(
            f"{granularity}-{query}-{component}",
            {"granularity": granularity},
            {"mask": query, "component_mask": component},
        )
        for granularity, (query, component) in itertools.product(
            ("sequence", "token"), (("empty_rows", "none"), ("random", "empty_rows"))
        )
    ),
    Variant("unmasked", {}, {"mask": "none", "component_mask": "none"}),
    Variant("disjoint", {}, {"mask": "one_hot", "component_mask": "one_hot"}),
    Variant(
        "all-masked", {"granularity": "token"}, {"mask": "all_empty", "component_mask": "random"}
    ),
)


def _entropy_entry(name: str, evaluate: Callable[[Case], Outputs], flags: tuple[str, ...]) -> Entry:
    return Entry(
        name=name,
        evaluate=evaluate,
        reference=_entropy_reference,
        build=_build_entropy,
        variants=ENTROPY_VARIANTS,
        stds=("stds",),
        masks={
            "mask": lambda c: tuple(c.tensors["transformed_embeddings"].shape[:2]),
            "component_mask": lambda c: tuple(c.tensors["clean_embeddings"].shape[:2]),
        },
        inactive=_entropy_inactive,
        flags=flags,
        module=_entropy_module,
        magnitude=_entropy_magnitude,
        empty_sizes=((4, 0, 3, 2), (0, 5, 3, 2), (4, 5, 0, 2), (4, 5, 3, 0)),
        key_variants=("token-random-empty_rows", "sequence-empty_rows-none"),
    )


GAUSSIAN_MIXTURE_ENTROPY = _entropy_entry(
    "gaussian_mixture_entropy", _entropy_evaluate, ("validate_args",)
)
GAUSSIAN_MIXTURE_ENTROPY_ESTIMATE = dataclasses.replace(
    _entropy_entry(
        "gaussian_mixture_entropy_estimate",
        _entropy_estimate_evaluate,
        ("validate_args", "with_components"),
    ),
    # the library vocabulary: the reference's cases under the other names
    build=lambda data, variant: _renamed(_build_entropy(data, variant), ENTROPY_VOCABULARY),
    reference=lambda case: _entropy_reference(_renamed(case, _REFERENCE_NAMES)),
    stds=("stds_tensor",),
    masks={
        "noise_mask": lambda c: tuple(c.tensors["noisy_input_embeddings"].shape[:2]),
        "component_mask": lambda c: tuple(c.tensors["clean_input_embeddings"].shape[:2]),
    },
    inactive=lambda case: {
        ENTROPY_VOCABULARY[k]: v
        for k, v in _entropy_inactive(_renamed(case, _REFERENCE_NAMES)).items()
    },
    module=lambda case: _entropy_module(_renamed(case, _REFERENCE_NAMES)),
    magnitude=lambda case, reference: _entropy_magnitude(
        _renamed(case, _REFERENCE_NAMES), reference
    ),
)
