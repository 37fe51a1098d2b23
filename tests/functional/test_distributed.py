"""Component gathering across ranks (docs/math.md#distributed-evaluation) on the gloo backend.

2 and 3 CPU processes each evaluate every case of ``tests/distributed_worker.py`` once; the
parent rebuilds the global batch and checks every rank's value, components, number of queries
and input gradients against a single-process float64 evaluation: each rank's queries against
all ranks' components (padded to the largest ``S``, masked), gradients of the sum of the ranks'
values.
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from mi_losses import GaussianMixtureEntropy, SubBatchMutualInformation
from mi_losses.functional import mutual_information_sub_batch
from mi_losses.functional._distributed import gather_components
from mi_losses.options import GatherOptions
from tests import reference
from tests.distributed_worker import CASES, NAMES, make_inputs, worker

pytestmark = pytest.mark.slow  # a real model, or several processes

TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(world_size: int, out_dir: Path) -> list[list[dict[str, Any]]]:
    """Run ``worker`` on ``world_size`` processes; fail (never hang) after ``TIMEOUT_S``."""
    # Forked from a server that imported torch once: a spawned process would import it again.
    multiprocessing.set_forkserver_preload(["tests.distributed_worker"])
    context = mp.start_processes(
        worker,
        args=(world_size, free_port(), str(out_dir)),
        nprocs=world_size,
        join=False,
        start_method="forkserver",
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{world_size} gloo processes still running after {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world_size)]


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    world_size = request.param
    return world_size, spawn(world_size, tmp_path_factory.mktemp(f"world{world_size}"))


def padded(tensor: torch.Tensor, length: int, value: float = 0.0) -> torch.Tensor:
    """``(n, s, ...)`` padded along ``s`` to ``length``."""
    pad = [0, 0] * (tensor.dim() - 2) + [0, length - tensor.shape[1]]
    return F.pad(tensor, pad, value=value)


class GlobalBatch:
    """All ranks' inputs of one case in one process, padded to the largest ``S`` (masked)."""

    def __init__(self, case: int, world_size: int) -> None:
        self.options = CASES[case]
        self.world_size = world_size
        self.inputs = [make_inputs(case, r) for r in range(world_size)]
        length = max(x["mask"].shape[1] for x in self.inputs)
        self.pad = [
            {
                "clean": padded(x["clean"], length),
                "means": padded(x["means"], length),
                "stds": padded(x["stds"], length, 1.0),
                "noisy": padded(x["noisy"], length),
                "mask": padded(x["mask"], length, False),
                "query_mask": padded(x["query_mask"], length, False),
                # the positions that exist: "all positions" of a rank's components
                "exists": padded(torch.ones_like(x["mask"]), length, False),
            }
            for x in self.inputs
        ]

    def part(self, q: int, key: str, name: str) -> torch.Tensor:
        """``key`` of rank ``q``'s ``first``/``second`` half (split at its own B_q / 2) or ``all``."""
        tensor = self.pad[q][key]
        half = tensor.shape[0] // 2
        return {"first": tensor[:half], "second": tensor[half:], "all": tensor}[name]

    def pool(self, r: int, key: str, name: str) -> torch.Tensor:
        """``key`` of the components rank ``r`` sees: every rank's ``name`` part, or its own."""
        chosen = range(self.world_size) if self.options["gather"] else [r]
        return torch.cat([self.part(q, key, name) for q in chosen])

    def mi_direction(self, r: int, queries: str, components: str) -> Any:
        x, granularity = self.pad[r], self.options["granularity"]
        component_key = "mask" if self.options.get("combine", True) else "exists"
        return reference._mi_one_direction(
            self.part(r, "noisy", queries),
            self.part(r, "clean", queries),
            self.part(r, "means", queries),
            self.part(r, "stds", queries),
            self.part(r, "mask", queries),
            self.pool(r, "clean", components),
            self.pool(r, "means", components),
            self.pool(r, "stds", components),
            self.pool(r, component_key, components),
            granularity,
            False,
            (x["means"], x["stds"], x["clean"], x["noisy"]),
        )

    def estimate(self, r: int) -> Any:
        """Rank ``r``'s float64 reference estimate: its queries against what it sees."""
        if self.options["estimator"] == "entropy":
            return reference.gaussian_mixture_entropy(
                self.pool(r, "clean", "all"),
                self.pad[r]["noisy"],
                self.pool(r, "means", "all"),
                self.pool(r, "stds", "all"),
                self.pad[r]["query_mask"],
                component_mask=self.pool(r, "mask", "all"),
                granularity=self.options["granularity"],
            )
        if not self.options.get("symmetric"):
            return self.mi_direction(r, "first", "second")
        both = [self.mi_direction(r, "first", "second"), self.mi_direction(r, "second", "first")]
        return reference._average_directions(both, (self.pad[r]["clean"],))


def reference_values(case: int, world_size: int) -> tuple[list[Any], list[dict[str, torch.Tensor]]]:
    """Every rank's float64 reference estimate, and the gradients of their sum per rank."""
    batch = GlobalBatch(case, world_size)
    results = [batch.estimate(r) for r in range(world_size)]
    total = torch.stack([result.value for result in results]).sum()
    leaves = [x[k] for x in batch.inputs for k in NAMES]
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    per_rank = [
        {k: grads[r * len(NAMES) + i] for i, k in enumerate(NAMES)} for r in range(world_size)
    ]
    return results, per_rank


@pytest.mark.parametrize("case", range(len(CASES) - 2), ids=lambda c: str(CASES[c]))
def test_value_and_gradients_equal_float64_global_batch(ranks: Any, case: int) -> None:
    world_size, results = ranks
    expected, expected_grads = reference_values(case, world_size)
    for r in range(world_size):
        got = results[r][case]
        torch.testing.assert_close(got["value"], expected[r].value.detach())
        assert got["num_queries"] == expected[r].num_queries  # this rank's own queries
        for key, value in expected[r].components.items():
            torch.testing.assert_close(got["components"][key], value, msg=f"rank {r}: {key}")
        for name in NAMES:
            want = expected_grads[r][name]
            want = torch.zeros_like(got["grads"][name]) if want is None else want
            torch.testing.assert_close(got["grads"][name], want, msg=f"rank {r}: d/d {name}")


def test_gather_on_and_off_differ_as_they_should(ranks: Any) -> None:
    """Off: each rank sees only its own components; on: more components, another value."""
    world_size, results = ranks
    on, off = 0, 4  # the same sequence-granularity MI without and with gathering
    assert CASES[on]["gather"] and not CASES[off]["gather"]
    for r in range(world_size):
        on_r, off_r = results[r][on], results[r][off]
        if r == 2:  # no local component: only gathering gives this rank valid queries
            assert off_r["num_queries"] == 0 and on_r["num_queries"] > 0
            continue
        assert on_r["num_queries"] >= off_r["num_queries"] > 0
        assert not torch.allclose(on_r["value"], off_r["value"])
        # Without gathering a rank's value depends on its own inputs only, so no other rank's
        # gradient reaches its components; with it, it does.
        assert not torch.allclose(on_r["grads"]["means"], off_r["grads"]["means"])


@pytest.mark.parametrize("case", [len(CASES) - 2, len(CASES) - 1])
def test_bounded_gather_uses_at_most_k_components_per_rank(ranks: Any, case: int) -> None:
    """``max_gathered_components=K``: the same random subset on every rank, at most K per rank,
    and the value is the float64 estimate against exactly that subset."""
    world_size, results = ranks
    options = CASES[case]
    k, granularity = options["max"], options["granularity"]
    inputs = [make_inputs(case, r) for r in range(world_size)]
    available = []
    for x in inputs:
        half = x["mask"].shape[0] // 2
        mask = x["mask"][half:]
        available.append(int(mask.sum()) if granularity == "token" else int(mask.any(-1).sum()))
    expected_count = sum(min(k, n) for n in available)
    token_sets = []
    for r, x in enumerate(inputs):
        centres, stds, mask = results[r][case]["gathered"]
        assert centres.shape[1] == x["mask"].shape[1]  # laid out with the local S
        if granularity == "token":
            assert int(mask.sum()) == expected_count
            token_sets.append(torch.cat([centres[mask], stds[mask]], -1))
        else:
            assert int(mask.any(-1).sum()) == expected_count
        half = x["clean"].shape[0] // 2
        want = reference._mi_one_direction(
            x["noisy"][:half],
            x["clean"][:half],
            x["means"][:half],
            x["stds"][:half],
            x["mask"][:half],
            centres,
            torch.zeros_like(centres),
            stds,
            mask,
            granularity,
            False,
            (x["clean"],),
        )
        torch.testing.assert_close(results[r][case]["value"], want.value.detach())
    for tokens in token_sets[1:]:
        torch.testing.assert_close(tokens, token_sets[0])  # every rank: the same subset


def test_logged_component_losses_are_the_global_weighted_mean(ranks: Any) -> None:
    """``ComponentLossMetrics(sync_on_step=True)`` (what the logger uses): step and epoch values
    are equal on all ranks and weight each rank's components by its number of valid queries."""
    world_size, results = ranks
    weights = torch.tensor([float(results[r][0]["num_queries"]) for r in range(world_size)])
    for key in results[0][0]["components"]:
        values = torch.stack([results[r][0]["components"][key] for r in range(world_size)])
        expected = (weights * values).sum() / weights.sum()
        assert not torch.allclose(values, values.mean()), "ranks must differ for this check"
        for r in range(world_size):
            torch.testing.assert_close(results[r][0]["step"][key].double(), expected)
            torch.testing.assert_close(results[r][0]["epoch"][key].double(), expected)


def test_without_process_group_nothing_changes() -> None:
    inputs = make_inputs(0, 1)
    args = (inputs["means"], inputs["stds"], inputs["mask"], inputs["clean"], inputs["noisy"])
    plain = mutual_information_sub_batch(*args)
    gathered = mutual_information_sub_batch(*args, gather=GatherOptions(max_gathered_components=1))
    assert torch.equal(plain, gathered)
    centres, stds, mask = inputs["clean"], inputs["stds"], inputs["mask"]
    returned = gather_components(centres, stds, mask)
    assert all(a is b for a, b in zip(returned, (centres, stds, mask), strict=True))


def test_world_of_one_changes_nothing() -> None:
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1
    )
    try:
        test_without_process_group_nothing_changes()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("module", [SubBatchMutualInformation, GaussianMixtureEntropy])
def test_module_options_are_plain_and_validated(module: Any) -> None:
    loss = module(gather=True, max_gathered_components=4)
    assert loss.gather and loss.max_gathered_components == 4
    assert loss.process_group is None
    assert "gather=True" in repr(loss)
    with pytest.raises(ValueError, match=f"{module.__name__}: gather must be a bool"):
        module(gather=1)
    with pytest.raises(
        ValueError, match=f"{module.__name__}: max_gathered_components must be None or an int >= 1"
    ):
        module(gather=True, max_gathered_components=0)
