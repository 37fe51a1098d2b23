"""Registry entries of ``mutual_information_sub_batch`` and its ``_estimate`` form."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

import mi_losses.functional as F
from mi_losses import SubBatchMutualInformation
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

MI_FLAG = "combine_noise_masks_for_mutual_information_sub_batches"

MI_ARGS = ("means_tensor", "stds_tensor", "clean_input_embeddings", "noisy_input_embeddings")


def _build_mi(data: Data, variant: Variant) -> Case:
    b, s, e = data.sizes or (6, 3, 2)
    g = torch.Generator().manual_seed(data.seed)
    clean = data.clean((b, s, e), g)
    means, stds = data.means((b, s, e), g), data.stds((b, s, e), g)
    noisy = clean + means + stds * randn((b, s, e), g)
    tensors = dict(zip(MI_ARGS, (means, stds, clean, noisy), strict=True))
    mask = mask_of(variant.masks.get("noise_mask"), b, s, seed=data.seed + 1)
    return Case(tensors, {"noise_mask": mask}, dict(variant.options))


def _mi_inactive(case: Case) -> dict[str, Tensor]:
    """Positions MATH.md never reads: masked query positions, masked components when the
    masks are combined, and the whole noisy second half when it is never a query."""
    b, s, _ = case.tensors["means_tensor"].shape
    half = b // 2
    mask = bool_mask(case.masks["noise_mask"], (b, s))
    combine = case.options.get(MI_FLAG, True)
    symmetric = case.options.get("symmetric", False)
    first, second = ~mask[:half], ~mask[half:]
    nothing = torch.zeros(half, s, dtype=torch.bool)
    everything = torch.ones(half, s, dtype=torch.bool)
    noisy = torch.cat([first, second if symmetric else everything])
    own = torch.cat(
        [first if (combine or not symmetric) else nothing, second if combine else nothing]
    )
    return {
        "noisy_input_embeddings": noisy,
        "clean_input_embeddings": own,
        "means_tensor": own,
        "stds_tensor": own,
    }


def _mi_magnitude(case: Case, reference: Outputs) -> float:
    """Softmax-weighted distances, own terms and log-normalisers of the reference."""
    weighted = sum(
        abs(float(reference[k]))
        for k in (ref.MAHALANOBIS_KEY, ref.LOG_CONSTANTS_KEY, ref.STD_LOG_KEY)
    )
    return weighted + 2.0 * log_std_magnitude(case.tensors["stds_tensor"])


def _mi_reference(case: Case) -> Outputs:
    result = ref.mutual_information_sub_batch(**case.kwargs())
    return {"value": result.value, **result.components}


def _mi_evaluate(case: Case) -> Outputs:
    losses: dict[str, Tensor] = {}
    value = F.mutual_information_sub_batch(**case.kwargs(losses=losses))
    return {"value": value, **losses}


def _mi_estimate_evaluate(case: Case) -> Outputs:
    estimate = F.mutual_information_sub_batch_estimate(**case.kwargs())
    return {"value": estimate.value, **estimate.components}


def _mi_module(case: Case) -> Tensor:
    module = SubBatchMutualInformation(
        combine_noise_masks_for_mutual_information_sub_batches=case.options.get(MI_FLAG, True),
        granularity=case.options.get("granularity", "sequence"),
        symmetric=case.options.get("symmetric", False),
    )
    t = case.tensors
    return module(
        t["means_tensor"],
        t["stds_tensor"],
        case.masks["noise_mask"],
        t["clean_input_embeddings"],
        t["noisy_input_embeddings"],
    )


MI_VARIANTS = (
    *(
        Variant(
            f"{granularity}-{'combine' if combine else 'separate'}-"
            f"{'symmetric' if symmetric else 'forward'}",
            {"granularity": granularity, MI_FLAG: combine, "symmetric": symmetric},
            {"noise_mask": "empty_rows"},
        )
        for granularity, combine, symmetric in itertools.product(
            ("sequence", "token"), (True, False), (False, True)
        )
    ),
    Variant("unmasked", {}, {"noise_mask": "none"}),
    Variant("one-hot", {"granularity": "sequence"}, {"noise_mask": "one_hot"}),
    Variant("int-mask", {"granularity": "token", "symmetric": True}, {"noise_mask": "int01"}),
    Variant("all-masked", {"granularity": "token", "symmetric": True}, {"noise_mask": "all_empty"}),
)


def _mi_entry(name: str, evaluate: Callable[[Case], Outputs], flags: tuple[str, ...]) -> Entry:
    return Entry(
        name=name,
        evaluate=evaluate,
        reference=_mi_reference,
        build=_build_mi,
        variants=MI_VARIANTS,
        stds=("stds_tensor",),
        masks={"noise_mask": lambda c: tuple(c.tensors["means_tensor"].shape[:2])},
        inactive=_mi_inactive,
        flags=flags,
        module=_mi_module,
        magnitude=_mi_magnitude,
        empty_sizes=((0, 3, 2), (4, 0, 2), (4, 3, 0)),
        key_variants=("token-combine-symmetric", "sequence-separate-forward"),
    )


MUTUAL_INFORMATION_SUB_BATCH = _mi_entry(
    "mutual_information_sub_batch", _mi_evaluate, (MI_FLAG, "symmetric", "validate_args")
)
MUTUAL_INFORMATION_SUB_BATCH_ESTIMATE = _mi_entry(
    "mutual_information_sub_batch_estimate",
    _mi_estimate_evaluate,
    (MI_FLAG, "symmetric", "validate_args", "with_components"),
)


def _bounds_reference(case: Case) -> Outputs:
    lower = ref.mutual_information_sub_batch(**case.kwargs(), info_nce=True)
    upper = ref.mutual_information_sub_batch(**case.kwargs())
    return {"value": lower.value, "upper": upper.value, **upper.components}


def _bounds_evaluate(case: Case) -> Outputs:
    losses: dict[str, Tensor] = {}
    bounds = F.mutual_information_bounds(**case.kwargs(losses=losses))
    return {"value": bounds.lower, "upper": bounds.upper, **losses}


MUTUAL_INFORMATION_BOUNDS = replace(
    _mi_entry(
        "mutual_information_bounds", _bounds_evaluate, (MI_FLAG, "symmetric", "validate_args")
    ),
    reference=_bounds_reference,
    module=None,
)
