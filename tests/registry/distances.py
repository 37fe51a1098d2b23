"""Registry entries of ``square_mahalanobis_distance`` and ``pairwise_square_mahalanobis_distance``."""

from __future__ import annotations

import torch
from torch import Tensor

import mi_losses.functional as F
from mi_losses import MahalanobisDistance
from tests import reference as ref
from tests.harness import (
    Case,
    Data,
    Entry,
    Outputs,
    Variant,
    any_to,
    bool_mask,
    mask_of,
    randn,
)


def _build_distance(data: Data, variant: Variant) -> Case:
    b, s, e = data.sizes or (4, 3, 2)
    g = torch.Generator().manual_seed(data.seed)
    x = data.clean((b, s, e), g)
    stds = data.stds((b, s, e), g)
    y = x + data.means((b, s, e), g) + stds * randn((b, s, e), g)
    tensors = {"x": x, "y": y, "stds": stds}
    mask = mask_of(variant.masks.get("mask"), b, s, seed=data.seed + 1)
    if variant.options.get("broadcast"):  # (M, 1, S, E) against (1, N, S, E): the (M, N) matrix
        half = b // 2
        tensors = {"x": x[:half, None], "y": y[None, half:], "stds": stds[None, half:]}
        if mask is not None:
            mask = mask[:half, None] & mask[None, half:]
    return Case(tensors, {"mask": mask}, {})


def _distance_inactive(case: Case) -> dict[str, Tensor]:
    t = case.tensors
    full = torch.broadcast_shapes(*(v.shape for v in t.values()))[:-1]
    active = bool_mask(case.masks["mask"], full)
    return {k: ~any_to(active, v.shape[:-1]) for k, v in t.items()}


def _distance_reference(case: Case) -> Outputs:
    return {"value": ref.square_mahalanobis_distance(**case.kwargs())}


def _elementwise_magnitude(case: Case, reference: Outputs) -> float:
    """Elementwise results: the tolerance is relative per element (``rtol``), no extra."""
    return 0.0


def _distance_module(case: Case) -> Tensor:
    t = case.tensors
    return MahalanobisDistance(reduction="none")(t["x"], t["y"], t["stds"], case.masks["mask"])


PAIRWISE_ARGS = ("x", "y", "stds")


def _build_pairwise(data: Data, variant: Variant) -> Case:
    m, n, s, e = data.sizes or (4, 5, 3, 2)
    g = torch.Generator().manual_seed(data.seed)
    y, stds = data.clean((n, s, e), g), data.stds((n, s, e), g)
    if n:
        pick = torch.randint(0, n, (m,), generator=g)
        x = y[pick] + stds[pick] * randn((m, s, e), g)
    else:
        x = data.clean((m, s, e), g)
    masks = {
        "x_mask": mask_of(variant.masks.get("x_mask"), m, s, seed=data.seed + 1),
        "y_mask": mask_of(variant.masks.get("y_mask"), n, s, seed=data.seed + 2),
    }
    return Case(dict(zip(PAIRWISE_ARGS, (x, y, stds), strict=True)), masks, {})


def _pairwise_inactive(case: Case) -> dict[str, Tensor]:
    m, s, _ = case.tensors["x"].shape
    n = case.tensors["y"].shape[0]
    components = ~bool_mask(case.masks["y_mask"], (n, s))
    return {"x": ~bool_mask(case.masks["x_mask"], (m, s)), "y": components, "stds": components}


def _pairwise_reference(case: Case) -> Outputs:
    t, masks = case.tensors, case.masks
    return {
        "value": ref.pairwise_square_mahalanobis_distance(
            t["x"], t["y"], t["stds"], masks["x_mask"], masks["y_mask"]
        )
    }


SQUARE_MAHALANOBIS_DISTANCE = Entry(
    name="square_mahalanobis_distance",
    evaluate=lambda c: {"value": F.square_mahalanobis_distance(**c.kwargs())},
    reference=_distance_reference,
    build=_build_distance,
    variants=(
        Variant("unmasked", {}, {"mask": "none"}),
        Variant("masked", {}, {"mask": "empty_rows"}),
        Variant("int-mask", {}, {"mask": "int01"}),
        Variant("pairwise-broadcast", {"broadcast": True}, {"mask": "random"}),
    ),
    stds=("stds",),
    masks={"mask": lambda c: tuple(c.tensors["x"].shape[:-1])},
    inactive=_distance_inactive,
    flags=("validate_args",),
    module=lambda c: _distance_module(c),
    magnitude=_elementwise_magnitude,
    empty_sizes=((0, 3, 2), (4, 0, 2), (4, 3, 0)),
    key_variants=("masked",),
    elementwise=True,
)

PAIRWISE_SQUARE_MAHALANOBIS_DISTANCE = Entry(
    name="pairwise_square_mahalanobis_distance",
    evaluate=lambda c: {"value": F.pairwise_square_mahalanobis_distance(**c.kwargs())},
    reference=_pairwise_reference,
    build=_build_pairwise,
    variants=(
        Variant("unmasked", {}, {}),
        Variant("masked", {}, {"x_mask": "empty_rows", "y_mask": "random"}),
        Variant("int-masks", {}, {"x_mask": "int01", "y_mask": "int01"}),
    ),
    stds=("stds",),
    masks={
        "x_mask": lambda c: tuple(c.tensors["x"].shape[:2]),
        "y_mask": lambda c: tuple(c.tensors["y"].shape[:2]),
    },
    inactive=_pairwise_inactive,
    flags=("validate_args",),
    module=None,
    magnitude=_elementwise_magnitude,
    empty_sizes=((0, 5, 3, 2), (4, 0, 3, 2), (4, 5, 0, 2), (4, 5, 3, 0)),
    key_variants=("masked",),
    elementwise=True,
)
