"""Registry entry of ``gaussian_entropy_log_loss``."""

from __future__ import annotations

import torch
from torch import Tensor

import mi_losses.functional as F
from tests import reference as ref
from tests.harness import (
    Case,
    Data,
    Entry,
    Variant,
    bool_mask,
    mask_of,
    max_abs,
)


def _build_gaussian_entropy(data: Data, variant: Variant) -> Case:
    b, s, e = data.sizes or (4, 3, 2)
    g = torch.Generator().manual_seed(data.seed)
    mask = mask_of(variant.masks.get("noise_mask"), b, s, seed=data.seed + 1)
    return Case({"stds": data.stds((b, s, e), g)}, {"noise_mask": mask}, {})


def _gaussian_entropy_inactive(case: Case) -> dict[str, Tensor]:
    stds = case.tensors["stds"]
    return {"stds": ~bool_mask(case.masks["noise_mask"], stds.shape[:-1])}


GAUSSIAN_ENTROPY_LOG_LOSS = Entry(
    name="gaussian_entropy_log_loss",
    evaluate=lambda c: {"value": F.gaussian_entropy_log_loss(**c.kwargs())},
    reference=lambda c: {"value": ref.gaussian_entropy_log_loss(**c.kwargs())},
    build=_build_gaussian_entropy,
    variants=(
        Variant("unmasked", {}, {}),
        Variant("masked", {}, {"noise_mask": "empty_rows"}),
        Variant("all-masked", {}, {"noise_mask": "all_empty"}),
    ),
    stds=("stds",),
    masks={"noise_mask": lambda c: tuple(c.tensors["stds"].shape[:-1])},
    inactive=_gaussian_entropy_inactive,
    flags=("validate_args",),
    module=None,
    magnitude=lambda c, r: max_abs(c.tensors["stds"].detach().double().log()) + 2.0,
    empty_sizes=((0, 3, 2), (4, 0, 2), (4, 3, 0)),
    key_variants=("masked",),
)
