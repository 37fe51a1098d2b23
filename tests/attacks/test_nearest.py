"""The nearest-neighbour attack: pure torch, no optional extra needed."""

from __future__ import annotations

import pytest
import torch

from mi_losses.attacks.nearest import nearest_token_ids, recovery_rate


def brute_force(embeddings: torch.Tensor, table: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return torch.nn.functional.cosine_similarity(
            embeddings[:, None].double(), table[None].double(), dim=-1
        ).argmax(-1)
    return torch.cdist(embeddings.double(), table.double()).argmin(-1)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_chunked_search_equals_brute_force(metric: str) -> None:
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(1000, 16, generator=generator) * torch.rand(1000, 1, generator=generator)
    queries = torch.randn(300, 16, generator=generator)
    expected = brute_force(queries, table, metric)
    found = nearest_token_ids(queries, table, metric, vocab_chunk_size=97, query_chunk_size=64)
    assert torch.equal(found, expected)


def test_cosine_and_l2_differ_where_norms_differ() -> None:
    table = torch.tensor([[1.0, 0.0], [10.0, 1.0]])
    query = torch.tensor([[1.2, 0.2]])
    assert nearest_token_ids(query, table, "l2").tolist() == [0]
    assert nearest_token_ids(query, table, "cosine").tolist() == [1]


def test_recovery_rate_counts_masked_tokens_only() -> None:
    table = torch.eye(4)
    ids = torch.tensor([[0, 1, 2, 3]])
    noisy = table[ids].clone()
    noisy[0, 3] = table[0]  # wrong guess at position 3
    mask = torch.tensor([[True, True, True, False]])
    assert recovery_rate(noisy, ids, mask, table) == 1.0
    assert recovery_rate(noisy, ids, torch.ones_like(mask), table) == 0.75


def test_bad_shapes_and_metric_are_rejected() -> None:
    with pytest.raises(ValueError, match="same E"):
        nearest_token_ids(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(ValueError, match="metric must be"):
        nearest_token_ids(torch.randn(3, 4), torch.randn(5, 4), "dot")  # type: ignore[arg-type]
