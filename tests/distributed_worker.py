"""What each spawned rank of ``tests/test_distributed.py`` computes (gloo, CPU, float64).

Every rank builds its own inputs from ``(case, rank)`` alone, so the parent process can rebuild
the global batch and evaluate it with the float64 reference of ``tests/reference.py``. Ranks
differ in batch size and sequence length; in a 3-rank world, rank 2 has no active component.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from mi_losses.functional import (
    gaussian_mixture_entropy_estimate,
    mutual_information_sub_batch_estimate,
)
from mi_losses.functional._distributed import gather_components
from mi_losses.metrics import ComponentLossMetrics
from mi_losses.options import GatherOptions
from mi_losses.types import Estimate

E = 3
# estimator, granularity, gather, options
CASES: list[dict[str, Any]] = [
    {"estimator": "mi", "granularity": "sequence", "gather": True},
    {"estimator": "mi", "granularity": "token", "gather": True},
    {"estimator": "mi", "granularity": "sequence", "gather": True, "symmetric": True},
    {"estimator": "mi", "granularity": "sequence", "gather": True, "combine": False},
    {"estimator": "mi", "granularity": "sequence", "gather": False},
    {"estimator": "entropy", "granularity": "sequence", "gather": True},
    {"estimator": "entropy", "granularity": "token", "gather": True},
    {"estimator": "entropy", "granularity": "token", "gather": False},
    {"estimator": "mi", "granularity": "token", "gather": True, "max": 2},
    {"estimator": "mi", "granularity": "sequence", "gather": True, "max": 1},
]
NAMES = ("means", "stds", "clean", "noisy")


def make_inputs(case: int, rank: int) -> dict[str, torch.Tensor]:
    """Float64 leaves of rank ``rank``: ``(B_r, S_r, E)`` tensors and a ``(B_r, S_r)`` mask.

    For the entropy estimator ``noisy`` holds the queries (``M_r = B_r + 1`` rows) and the
    others the components (``B_r`` rows).
    """
    g = torch.Generator().manual_seed(1000 * case + rank)
    b, s = 4 + 2 * (rank % 2), 3 + rank  # ranks differ in batch size and sequence length
    mask = torch.rand(b, s, generator=g) < 0.7
    mask[:, 0] = True
    if rank == 2:
        mask[b // 2 :] = False  # no component on this rank (query and component mask)
    clean = torch.randn(b, s, E, generator=g, dtype=torch.float64)
    means = 0.3 * torch.randn(b, s, E, generator=g, dtype=torch.float64)
    stds = 0.5 + torch.rand(b, s, E, generator=g, dtype=torch.float64)
    noisy = clean + means + stds * torch.randn(b, s, E, generator=g, dtype=torch.float64)
    query_mask = mask
    if CASES[case]["estimator"] == "entropy":
        noisy = torch.randn(b + 1, s, E, generator=g, dtype=torch.float64)
        query_mask = torch.rand(b + 1, s, generator=g) < 0.7
    inputs = {"means": means, "stds": stds, "clean": clean, "noisy": noisy}
    return {
        **{k: v.requires_grad_() for k, v in inputs.items()},
        "mask": mask,
        "query_mask": query_mask,
    }


def estimate(case: int, inputs: dict[str, torch.Tensor], **gather: Any) -> Estimate:
    """The estimator of ``case`` on one rank's inputs."""
    options = CASES[case]
    if options["estimator"] == "entropy":
        return gaussian_mixture_entropy_estimate(
            inputs["means"],
            inputs["stds"],
            inputs["query_mask"],
            inputs["clean"],
            inputs["noisy"],
            component_mask=inputs["mask"],
            granularity=options["granularity"],
            **gather,
        )
    return mutual_information_sub_batch_estimate(
        inputs["means"],
        inputs["stds"],
        inputs["mask"],
        inputs["clean"],
        inputs["noisy"],
        options.get("combine", True),
        granularity=options["granularity"],
        symmetric=options.get("symmetric", False),
        **gather,
    )


def run_case(case: int, rank: int) -> dict[str, Any]:
    """Value, components, number of queries and input gradients of ``case`` on this rank."""
    options = CASES[case]
    inputs = make_inputs(case, rank)
    torch.manual_seed(7 + rank)  # the random subset of max_gathered_components
    result = estimate(
        case,
        inputs,
        gather=GatherOptions(options.get("max")) if options["gather"] else None,
    )
    result.value.backward()  # a collective when gathering: every rank runs it
    out: dict[str, Any] = {
        "value": result.value.detach(),
        "num_queries": int(result.num_queries),
        "components": dict(result.components),
        "grads": {k: inputs[k].grad for k in NAMES},
    }
    if "max" in options:
        torch.manual_seed(7 + rank)  # the same draw again, to name the gathered components
        half = inputs["clean"].shape[0] // 2
        centres = (inputs["clean"] + inputs["means"])[half:].detach()
        gathered = gather_components(
            centres,
            inputs["stds"][half:].detach(),
            inputs["mask"][half:],
            granularity=options["granularity"],
            max_gathered_components=options["max"],
        )
        out["gathered"] = gathered
    if case == 0:
        metrics = ComponentLossMetrics(sync_on_step=True)
        out["step"] = metrics(result.components, result.num_queries)
        out["epoch"] = metrics.compute()
    return out


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank: every case, saved to ``out_dir/rank{rank}.pt``."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results = [run_case(case, rank) for case in range(len(CASES))]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
