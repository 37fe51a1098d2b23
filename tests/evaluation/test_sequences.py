"""The study's training text split into a layer's part and an attacker's part."""

from __future__ import annotations

import pytest
import torch

from mi_losses.evaluation.sequences import StudyData, TokenizedSequences

N, S, V = 10, 3, 40


def study() -> StudyData:
    ids = torch.arange(N * S).reshape(N, S)  # every row distinct: row i starts with 3 * i
    ones = torch.ones(N, S, dtype=torch.bool)
    val = TokenizedSequences(ids[:2].clone(), ones[:2], ones[:2])
    counts = torch.bincount(ids.flatten(), minlength=V).double()
    return StudyData(
        TokenizedSequences(ids, ones, ones), val, torch.randn(V, 4), counts, torch.randn(2, 4)
    )


def rows(part: StudyData) -> list[int]:
    return (part.train.input_ids[:, 0] // S).tolist()


@pytest.mark.parametrize(("fraction", "attack_rows"), [(0.5, 5), (0.3, 3), (0.75, 8)])
def test_parts_are_disjoint_cover_the_training_text_and_keep_the_rest(
    fraction: float, attack_rows: int
) -> None:
    data = study()
    layer, attack = data.disjoint_training(fraction, seed=3)
    assert len(attack.train) == attack_rows and len(layer.train) == N - attack_rows
    assert not set(rows(layer)) & set(rows(attack))
    assert sorted(rows(layer) + rows(attack)) == list(range(N))
    assert rows(layer) == sorted(rows(layer)) and rows(attack) == sorted(rows(attack))
    for part in (layer, attack):
        # Masks travel with their rows; the vocabulary statistics and the validation text stay.
        assert torch.equal(part.train.noise_mask, data.train.noise_mask[rows(part)])
        assert part.counts is data.counts and part.table is data.table and part.val is data.val
        assert torch.equal(part.candidates, data.candidates)


def test_the_split_is_seeded() -> None:
    data = study()
    first = rows(data.disjoint_training(0.5, seed=0)[1])
    assert first == rows(data.disjoint_training(0.5, seed=0)[1])
    others = {tuple(rows(data.disjoint_training(0.5, seed=seed)[1])) for seed in range(1, 6)}
    assert others - {tuple(first)}


@pytest.mark.parametrize(
    ("fraction", "message"),
    [(0.0, r"must lie in \(0, 1\), got 0.0"), (1.0, "got 1.0"), (0.01, "leaves a part empty")],
)
def test_bad_fraction_is_rejected(fraction: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        study().disjoint_training(fraction, seed=0)
