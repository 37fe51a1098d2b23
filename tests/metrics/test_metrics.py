"""Component-loss metrics: weighted by valid queries, per key, exact under distributed sync."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mi_losses.metrics import ComponentLossMetrics

STEPS = [
    ({"a": 1.0, "b": -2.0}, 4),
    ({"a": 3.0, "b": 0.5}, 1),
    ({"a": -1.0, "b": 2.0}, 3),
]


def as_tensors(values: dict[str, float]) -> dict[str, torch.Tensor]:
    return {key: torch.tensor(value) for key, value in values.items()}


def weighted_mean(steps: list[tuple[dict[str, float], int]], key: str) -> float:
    return sum(v[key] * w for v, w in steps) / sum(w for _, w in steps)


def test_epoch_value_is_the_mean_over_valid_queries() -> None:
    metrics = ComponentLossMetrics()
    for values, weight in STEPS:
        step = metrics(as_tensors(values), torch.tensor(weight))
        assert {k: float(v) for k, v in step.items()} == values
    result = metrics.compute()
    assert set(result) == {"a", "b"}
    for key in ("a", "b"):
        assert float(result[key]) == pytest.approx(weighted_mean(STEPS, key))
    # Not the unweighted mean of the step values.
    assert float(result["a"]) != pytest.approx(sum(v["a"] for v, _ in STEPS) / len(STEPS))


def test_update_and_reset() -> None:
    metrics = ComponentLossMetrics(keys=["a"])
    metrics.update(as_tensors({"a": 2.0}), 1)
    metrics.reset()
    metrics.update(as_tensors({"a": 5.0}), 2)
    assert float(metrics.compute()["a"]) == 5.0
    assert "a" in metrics and len(metrics) == 1


def test_instances_do_not_share_state() -> None:
    train, val = ComponentLossMetrics(), ComponentLossMetrics()
    train.update(as_tensors({"a": 1.0}), 1)
    val.update(as_tensors({"a": 9.0}), 1)
    assert float(train.compute()["a"]) == 1.0
    assert float(val.compute()["a"]) == 9.0


def test_step_without_valid_queries_does_not_move_the_epoch_value() -> None:
    metrics = ComponentLossMetrics()
    metrics(as_tensors({"a": 2.0}), torch.tensor(3))
    step = metrics(as_tensors({"a": 0.0}), torch.tensor(0))
    assert torch.isnan(step["a"])
    assert float(metrics.compute()["a"]) == 2.0


@pytest.mark.parametrize("call", ["update", "forward"])
def test_nan_component_is_a_value_error_naming_the_key(call: str) -> None:
    metrics = ComponentLossMetrics()
    metrics.update(as_tensors({"a": 1.0, "b": 2.0}), 1)
    with pytest.raises(ValueError, match=r"^component 'b' is NaN at a step with weight 2"):
        getattr(metrics, call)(as_tensors({"a": 1.0, "b": float("nan")}), torch.tensor(2))
    assert float(metrics.compute()["a"]) == 1.0  # nothing of the bad step was accumulated


@pytest.mark.parametrize("weight", [0, 0.0, torch.tensor(0)])
def test_step_with_weight_0_is_ignored_even_if_nan(weight: object) -> None:
    metrics = ComponentLossMetrics()
    metrics.update(as_tensors({"a": 2.0}), 3)
    metrics.update(as_tensors({"a": float("nan")}), weight)  # type: ignore[arg-type]
    step = metrics(as_tensors({"a": float("nan")}), weight)  # type: ignore[arg-type]
    assert torch.isnan(step["a"])
    assert float(metrics.compute()["a"]) == 2.0


def test_first_step_with_weight_0_creates_the_keys() -> None:
    metrics = ComponentLossMetrics()
    metrics.update(as_tensors({"a": float("nan")}), 0)
    assert "a" in metrics
    with pytest.raises(ValueError, match=r"extra \['b'\]"):
        metrics.update(as_tensors({"a": 1.0, "b": 1.0}), 1)


@pytest.mark.parametrize(
    ("weight", "text"),
    [(-1, "-1"), (-0.5, "-0.5"), (torch.tensor(-2), "-2"), (float("nan"), "nan")],
)
def test_negative_or_nan_weight_is_a_value_error(weight: object, text: str) -> None:
    metrics = ComponentLossMetrics()
    for call in (metrics.update, metrics.forward):
        with pytest.raises(ValueError, match=rf"^weight must be >= 0 .*got {text}$"):
            call(as_tensors({"a": 1.0}), weight)  # type: ignore[arg-type]
    assert len(metrics) == 0


def test_non_scalar_weight_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"weight must be a scalar .*\(2,\)"):
        ComponentLossMetrics().update(as_tensors({"a": 1.0}), torch.tensor([1, 2]))


@pytest.mark.parametrize(
    ("keys", "text"),
    [
        ({"a": 1.0}, r"missing \['b'\], extra \[\]"),
        ({"a": 1.0, "b": 1.0, "c": 1.0}, r"missing \[\], extra \['c'\]"),
        ({"a": 1.0, "c": 1.0}, r"missing \['b'\], extra \['c'\]"),
    ],
)
@pytest.mark.parametrize("weight", [1, 0])
def test_keys_that_change_are_a_value_error(keys: dict[str, float], text: str, weight: int) -> None:
    metrics = ComponentLossMetrics()
    metrics(as_tensors({"a": 1.0, "b": 2.0}), 1)
    with pytest.raises(ValueError, match=rf"keys \['a', 'b'\] of the first update; {text}"):
        metrics.update(as_tensors(keys), weight)
    metrics.reset()  # the keys stay
    with pytest.raises(ValueError, match=text):
        metrics(as_tensors(keys), weight)


def test_keys_given_up_front_are_enforced() -> None:
    metrics = ComponentLossMetrics(keys=["a", "b"])
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        metrics.update(as_tensors({"a": 1.0}), 1)
    metrics.update(as_tensors({"b": 1.0, "a": 3.0}), 1)  # order does not matter
    assert float(metrics.compute()["a"]) == 3.0


def _distributed_worker(rank: int, world_size: int, init_file: str, queue) -> None:  # type: ignore[no-untyped-def]
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        metrics = ComponentLossMetrics()
        for values, weight in STEPS[rank::world_size]:
            metrics.update(as_tensors(values), torch.tensor(weight))
        queue.put((rank, {k: float(v) for k, v in metrics.compute().items()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_distributed_sync_gives_the_global_weighted_mean(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Rank 0 sees steps 0 and 2, rank 1 sees step 1: different numbers of valid queries per rank.
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(
        _distributed_worker,
        args=(2, str(tmp_path / "init"), queue),
        nprocs=2,
        start_method="spawn",
    )
    results = dict(queue.get() for _ in range(2))
    for rank in (0, 1):
        for key in ("a", "b"):
            assert results[rank][key] == pytest.approx(weighted_mean(STEPS, key))
