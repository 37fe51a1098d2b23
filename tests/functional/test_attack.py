"""The Bayes-optimal token attack against brute force and nearest neighbours; Fano's floor."""

from __future__ import annotations

import math

import pytest
import torch

from mi_losses.attacks.nearest import nearest_token_ids
from mi_losses.functional import (
    bayes_token_attack,
    fano_error_floor,
    prior_entropy,
    vocabulary_mutual_information_estimate,
)
from tests import vocabulary_reference as ref
from tests.functional.test_vocabulary import make_channel


def attack(c: dict[str, torch.Tensor], mask: torch.Tensor | None = None, **kwargs: object):
    return bayes_token_attack(
        c["means"], c["stds"], mask, c["noisy"], c["table"], c["prior"], **kwargs
    )


def posterior(c: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Brute-force posterior ``p(v | y)`` over the vocabulary, ``(V,)``."""
    return torch.softmax(ref.log_joint(y, c["table"], c["prior"], c["means"], c["stds"]), 0)


@pytest.mark.parametrize("chunk", [1, 3, 100])
@pytest.mark.parametrize("top_k", [1, 3])
def test_guesses_are_the_brute_force_maximum_a_posteriori(chunk: int, top_k: int) -> None:
    c = make_channel(11, zero_rows=(2, 4))
    guesses = attack(c, c["mask"], top_k=top_k, vocab_chunk_size=chunk)
    expected_shape = (*c["mask"].shape, top_k) if top_k > 1 else c["mask"].shape
    assert guesses.shape == expected_shape and guesses.dtype == torch.int64
    guesses = guesses.reshape(*c["mask"].shape, top_k)
    for b, s in zip(*torch.nonzero(torch.ones_like(c["mask"]), as_tuple=True), strict=True):
        if not c["mask"][b, s]:
            assert bool((guesses[b, s] == -1).all())
            continue
        scores = ref.log_joint(c["noisy"][b, s], c["table"], c["prior"], c["means"], c["stds"])
        assert guesses[b, s].tolist() == scores.topk(top_k).indices.tolist()
        assert not {2, 4} & set(guesses[b, s].tolist())


def test_bayes_beats_nearest_neighbours() -> None:
    """Pointwise: the Bayes guess has the largest posterior, so on every input it is at least as
    likely to be right as the cosine or L2 nearest neighbour; on a sample it recovers more."""
    c = make_channel(12, v=40, e=8, b=50, s=40, zero_rows=(), std_range=(0.3, 1.2))
    skewed = torch.linspace(1.0, 6.0, 40, dtype=torch.float64).exp()
    c["prior"] = skewed / skewed.sum()
    g = torch.Generator().manual_seed(0)
    c["tokens"] = torch.multinomial(c["prior"], 50 * 40, replacement=True, generator=g).view(50, 40)
    noise = torch.randn(50, 40, 8, generator=g, dtype=torch.float64)
    t = c["tokens"]
    c["noisy"] = c["table"][t] + c["means"][t] + c["stds"][t] * noise
    bayes = attack(c)
    flat = c["noisy"].reshape(-1, 8)
    rates = {"bayes": float((bayes == t).double().mean())}
    for metric in ("cosine", "l2"):
        nearest = nearest_token_ids(flat, c["table"], metric).view(50, 40)
        rates[metric] = float((nearest == t).double().mean())
        for i in range(0, flat.shape[0], 97):  # pointwise optimality on a subsample
            post = posterior(c, flat[i])
            assert post[bayes.reshape(-1)[i]] >= post[nearest.reshape(-1)[i]] - 1e-12
    assert rates["bayes"] >= max(rates["cosine"], rates["l2"]) + 0.05, rates


def test_fano_floor_formula_and_validity() -> None:
    floor = fano_error_floor(math.log(1000), 1.0, 1000)
    assert math.isclose(float(floor), (math.log(1000) - 1.0 - math.log(2)) / math.log(999))
    assert float(fano_error_floor(1.0, 5.0, 10)) == 0.0
    tensor_floor = fano_error_floor(torch.tensor([3.0, 3.0]), torch.tensor([0.5, 2.9]), 50)
    assert tensor_floor.dtype == torch.float32 and tensor_floor.shape == (2,)
    with pytest.raises(ValueError, match="support_size"):
        fano_error_floor(1.0, 0.5, 2)
    # On a channel whose MI we estimate precisely, the Bayes attacker's error is above the floor.
    c = make_channel(13, v=30, e=2, b=40, s=50, zero_rows=(), std_range=(0.4, 0.8))
    estimate = vocabulary_mutual_information_estimate(
        c["means"], c["stds"], None, c["tokens"], c["noisy"], c["table"], c["prior"]
    )
    error = float((attack(c) != c["tokens"]).double().mean())
    floor = float(fano_error_floor(prior_entropy(c["prior"]), estimate.value, 30))
    assert 0.0 < floor <= error


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"top_k": 0}, "top_k must be a positive"), ({"top_k": 7}, "top_k must be at most")],
)
def test_bad_top_k(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        attack(make_channel(14, zero_rows=(0,)), **kwargs)


def test_bad_inputs_name_the_argument() -> None:
    c = make_channel(15)
    with pytest.raises(ValueError, match="embedding_table must have shape"):
        bayes_token_attack(c["means"], c["stds"], None, c["noisy"], c["table"][:, :1], c["prior"])
    with pytest.raises(ValueError, match="noise_mask must have shape"):
        attack(c, c["mask"][:1])
