"""The learned substitution channel: exact sparse MI against a direct float64 sum, gradients,
valid probabilities, draws that follow the channel, the masked release, the loss module, the
saved directory, and errors naming the argument."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from mi_losses.losses import SubstitutionMutualInformation
from mi_losses.mechanisms import LearnedSubstitution, channel_mutual_information, nearest_candidates
from mi_losses.mechanisms.substitution import FLOOR_LOG_PROBABILITY
from mi_losses.noise import GaussianNoiseLayer, PretrainedMixin

V, V_OUT, E, K = 7, 5, 3, 3


def _layer(seed: int = 0, num_candidates: int = K) -> tuple[LearnedSubstitution, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(V, E, generator=generator)
    output_table = table[:V_OUT]  # outputs are the first V_OUT inputs, as the study's candidates
    layer = LearnedSubstitution.nearest(table, output_table, num_candidates, epsilon=1.5)
    with torch.no_grad():
        layer.logits.add_(torch.randn(V, num_candidates, generator=generator))
    return layer, output_table


def _direct_mutual_information(layer: LearnedSubstitution, prior: torch.Tensor) -> float:
    """I(X; Y) by loops over every (x, y) in float64, from the dense channel."""
    probabilities = layer.log_probabilities().detach().double().exp()
    channel = [[0.0] * V_OUT for _ in range(V)]
    for x in range(V):
        for k in range(layer.candidates.shape[1]):
            channel[x][int(layer.candidates[x, k])] += float(probabilities[x, k])
    total = float(prior.double().sum())
    p = [float(v) / total for v in prior.double()]
    marginal = [sum(p[x] * channel[x][y] for x in range(V) if p[x] > 0) for y in range(V_OUT)]
    return sum(
        p[x] * channel[x][y] * math.log(channel[x][y] / marginal[y])
        for x in range(V)
        for y in range(V_OUT)
        if p[x] > 0 and channel[x][y] > 0
    )


def test_candidates_are_the_nearest_rows_nearest_first() -> None:
    layer, output_table = _layer()
    table = torch.randn(V, E, generator=torch.Generator().manual_seed(0))
    distances = torch.cdist(table.double(), output_table.double())
    order = distances.argsort(-1)[:, :K]
    assert torch.equal(layer.candidates, order)
    # An input that is also an output has itself as its first candidate (distance 0).
    assert torch.equal(layer.candidates[:V_OUT, 0], torch.arange(V_OUT))
    indices, found = nearest_candidates(table, output_table, K, chunk_size=2)
    assert torch.equal(indices, order)
    assert torch.allclose(found, distances.gather(1, order))


def test_initial_logits_are_santext_restricted_to_the_candidates() -> None:
    table = torch.randn(V, E, generator=torch.Generator().manual_seed(1))
    layer = LearnedSubstitution.nearest(table, table[:V_OUT], V_OUT, epsilon=2.0)
    santext = (-0.5 * 2.0 * torch.cdist(table.double(), table[:V_OUT].double())).log_softmax(-1)
    dense = layer.dense_log_probabilities().double()
    assert torch.allclose(dense, santext, atol=1e-5)


@pytest.mark.parametrize("zero_prior", [False, True])
def test_sparse_mutual_information_matches_a_direct_sum(zero_prior: bool) -> None:
    layer, _ = _layer(2)
    prior = torch.rand(V, generator=torch.Generator().manual_seed(3)) + 0.1
    if zero_prior:
        prior[V_OUT] = 0.0  # an input never drawn: dropped, never read
        with torch.no_grad():
            layer.logits[V_OUT] = torch.nan
    with torch.no_grad():
        value = layer.mutual_information(prior)
    assert value.dtype == torch.float64 and value.ndim == 0
    assert float(value) == pytest.approx(_direct_mutual_information(layer, prior), abs=1e-10)


def test_sparse_and_dense_paths_agree() -> None:
    layer, _ = _layer(4, num_candidates=V_OUT)  # every output is a candidate
    prior = torch.rand(V, generator=torch.Generator().manual_seed(5))
    dense = torch.full((V, V_OUT), -torch.inf, dtype=torch.float64)
    dense.scatter_(1, layer.candidates, layer.log_probabilities().detach().double())
    sparse = layer.mutual_information(prior).detach()
    assert float(sparse) == pytest.approx(
        float(channel_mutual_information(dense, prior)), abs=1e-12
    )


def test_mutual_information_limits() -> None:
    table = torch.randn(V, E, generator=torch.Generator().manual_seed(6))
    prior = torch.rand(V, generator=torch.Generator().manual_seed(7)) + 0.1
    # K = 1 and every input its own output: the identity channel leaks the prior's entropy.
    identity = LearnedSubstitution.nearest(table, table, 1)
    p = prior.double() / prior.double().sum()
    assert float(identity.mutual_information(prior).detach()) == pytest.approx(
        -float((p * p.log()).sum()), abs=1e-12
    )
    # Uniform over every output (epsilon 0, K = V_out): nothing leaks.
    uniform = LearnedSubstitution.nearest(table, table[:V_OUT], V_OUT, epsilon=0.0)
    assert float(uniform.mutual_information(prior).detach()) == pytest.approx(0.0, abs=1e-12)


def test_mutual_information_gradcheck() -> None:
    layer, _ = _layer(8)
    prior = torch.rand(V, generator=torch.Generator().manual_seed(9)) + 0.1
    logits = layer.logits.detach().double().requires_grad_(True)

    def mi(logits: torch.Tensor) -> torch.Tensor:
        return channel_mutual_information(
            logits.log_softmax(-1), prior, outputs=layer.candidates, num_outputs=V_OUT
        )

    assert torch.autograd.gradcheck(mi, (logits,))
    assert torch.autograd.gradgradcheck(mi, (logits,))


def test_relaxed_release_gradcheck_and_straight_through_draws() -> None:
    layer, output_table = _layer(10)
    layer.double()
    tokens = torch.tensor([[0, 3, 6], [5, 5, 1]])

    def released(logits: torch.Tensor, hard: bool) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            out: torch.Tensor = functional_call(
                layer, {"logits": logits}, (tokens, output_table.double(), 0.7), {"hard": hard}
            )
        return out

    logits = layer.logits.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: released(x, False), (logits,))
    hard = released(logits, True)
    # The forward value is a true candidate row; the gradient is the soft one's.
    rows = output_table.double()[layer.candidates[tokens]]
    assert bool(((hard.unsqueeze(-2) - rows).abs().amax(-1) == 0).any(-1).all())
    weights = torch.randn_like(hard)
    (hard_grad,) = torch.autograd.grad((hard * weights).sum(), logits)
    (soft_grad,) = torch.autograd.grad((released(logits, False) * weights).sum(), logits)
    assert torch.allclose(hard_grad, soft_grad)


def test_probabilities_are_valid_and_draws_follow_the_channel() -> None:
    layer, _ = _layer(11)
    assert torch.allclose(layer.log_probabilities().exp().sum(-1), torch.ones(V))
    dense = layer.dense_log_probabilities()
    assert dense.shape == (V, V_OUT)
    assert torch.allclose(dense.double().exp().sum(-1), torch.ones(V, dtype=torch.float64))
    off = torch.ones(V, V_OUT, dtype=torch.bool).scatter_(1, layer.candidates, False)
    assert bool((dense[off] == FLOOR_LOG_PROBABILITY).all())
    assert torch.equal(layer.dense_log_probabilities(torch.tensor([4, 2])), dense[[4, 2]])
    tokens = torch.full((20000,), 2)
    released = layer.sample(tokens, generator=torch.Generator().manual_seed(12))
    frequencies = torch.bincount(released, minlength=V_OUT).double() / tokens.shape[0]
    assert torch.allclose(frequencies, dense[2].double().exp(), atol=0.015)
    torch.manual_seed(13)
    hard = layer.relaxed(tokens, 0.5)
    assert torch.equal(hard.sum(-1), torch.ones(20000))
    picks = layer.candidates[2, hard.argmax(-1)]
    frequencies = torch.bincount(picks, minlength=V_OUT).double() / tokens.shape[0]
    assert torch.allclose(frequencies, dense[2].double().exp(), atol=0.015)


def test_bad_arguments_are_rejected() -> None:
    table = torch.randn(V, E)
    with pytest.raises(ValueError, match=r"num_candidates must lie in \[1, 5\]"):
        LearnedSubstitution.nearest(table, table[:V_OUT], 6)
    with pytest.raises(ValueError, match="output_table"):
        nearest_candidates(table, torch.randn(V_OUT, E + 1), 2)
    with pytest.raises(ValueError, match="epsilon"):
        LearnedSubstitution.nearest(table, table, 2, epsilon=-1.0)
    layer = LearnedSubstitution.nearest(table, table[:V_OUT], 2)
    with pytest.raises(ValueError, match="temperature"):
        layer.relaxed(torch.tensor([0]), 0.0)
    with pytest.raises(ValueError, match=r"prior must have shape \(7,\)"):
        layer.mutual_information(torch.ones(V + 1))
    with pytest.raises(ValueError, match=r"output_table must have shape \(5, E\)"):
        layer(torch.tensor([0]), table)
    log_channel = layer.log_probabilities()
    with pytest.raises(ValueError, match="together"):
        channel_mutual_information(log_channel, torch.ones(V), outputs=layer.candidates)
    with pytest.raises(ValueError, match=r"outputs must lie in \[0, num_outputs=2\)"):
        channel_mutual_information(
            log_channel, torch.ones(V), outputs=layer.candidates, num_outputs=2
        )
    with pytest.raises(ValueError, match="outputs must be int64"):
        channel_mutual_information(
            log_channel, torch.ones(V), outputs=layer.candidates[:, :1], num_outputs=V_OUT
        )


def test_release_noises_the_mask_only_and_trains_the_logits() -> None:
    layer, output_table = _layer(14)
    table = torch.randn(V, E, generator=torch.Generator().manual_seed(14))
    tokens = torch.tensor([[0, 3, 6, 2], [5, 5, 1, 4]])
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    torch.manual_seed(15)
    out = layer.release(tokens, table, mask, output_table=output_table)
    assert out.noisy.shape == (2, 4, E) and out.released.shape == (2, 4)
    assert torch.equal(out.noisy[~mask], table[tokens][~mask])
    assert bool((out.released[~mask] == -1).all())
    # At the mask: the released token's output row, one of the token's candidates.
    assert torch.equal(out.noisy[mask], output_table[out.released[mask]])
    assert bool((layer.candidates[tokens[mask]] == out.released[mask].unsqueeze(-1)).any(-1).all())
    # The straight-through draw: the value is a row, the gradient reaches the logits.
    out.noisy.square().sum().backward()
    assert layer.logits.grad is not None
    touched = torch.zeros(V, dtype=torch.bool)
    touched[tokens[mask]] = True
    assert bool(layer.logits.grad[touched].abs().sum(-1).gt(0).all())
    assert bool((layer.logits.grad[~touched] == 0).all())
    # The mask defaults to every position; the same seed gives the same draw.
    torch.manual_seed(15)
    again = layer.release(tokens, table, output_table=output_table)
    assert torch.equal(again.released[mask], out.released[mask])


def test_allowed_outputs_and_dense_columns() -> None:
    table = torch.randn(V, E, generator=torch.Generator().manual_seed(16))
    allowed = torch.tensor([6, 1, 4, 3])
    layer = LearnedSubstitution.nearest(table, table, 2, epsilon=1.0, allowed=allowed)
    assert layer.num_outputs == V
    distances = torch.cdist(table.double(), table[allowed].double())
    assert torch.equal(layer.candidates, allowed[distances.argsort(-1)[:, :2]])
    full = layer.dense_log_probabilities()
    columns = layer.dense_log_probabilities(outputs=allowed)
    assert torch.equal(columns, full[:, allowed])
    # Off the allowed outputs the full channel is at the floor: the columns keep the mass.
    assert torch.allclose(columns.double().exp().sum(-1), torch.ones(V, dtype=torch.float64))
    with pytest.raises(ValueError, match="outputs must hold every candidate"):
        layer.dense_log_probabilities(outputs=allowed[:2])


def test_loss_module_is_the_channel_mutual_information() -> None:
    layer, _ = _layer(17)
    counts = torch.tensor([5.0, 0.0, 2.0, 0.0, 1.0, 9.0, 3.0])
    for smoothing in (0.0, 0.5):
        loss = SubstitutionMutualInformation(prior_smoothing=smoothing)
        value = loss(layer, counts)
        expected = _direct_mutual_information(layer, counts.double() + smoothing)
        assert value.dtype == layer.logits.dtype and value.ndim == 0
        assert float(value) == pytest.approx(expected, rel=1e-6)
        assert loss.component_losses == {"mutual_information_loss": value.detach()}
        assert int(loss.last_num_queries) == int((counts + smoothing > 0).sum())
    bits = SubstitutionMutualInformation(units="bits")(layer, counts)
    nats = _direct_mutual_information(layer, counts.double())
    assert float(bits) == pytest.approx(nats / math.log(2), rel=1e-6)
    value.backward()
    assert layer.logits.grad is not None and bool(layer.logits.grad.abs().sum() > 0)


def test_a_trained_layer_is_a_directory(tmp_path: Path) -> None:
    layer, output_table = _layer(18)
    folder = layer.save_pretrained(tmp_path / "layer")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["class"] == "mi_losses.mechanisms.substitution.LearnedSubstitution"
    assert config["arguments"] == {
        "embedding_dim": E,
        "vocab_size": V,
        "num_candidates": K,
        "epsilon": 1.5,
        "temperature": 0.5,
        "num_outputs": V_OUT,
    }
    loaded = LearnedSubstitution.from_pretrained(folder)
    anything = PretrainedMixin.from_pretrained(folder)
    assert isinstance(anything, LearnedSubstitution) and not loaded.training
    assert torch.equal(loaded.candidates, layer.candidates)
    assert torch.equal(loaded.logits, layer.logits)
    prior = torch.rand(V, generator=torch.Generator().manual_seed(19))
    assert float(loaded.mutual_information(prior)) == float(layer.mutual_information(prior))
    # The same draws from one seed.
    tokens = torch.tensor([[0, 3, 6], [5, 5, 1]])
    for source in (layer, loaded):
        draws = source.sample(tokens, generator=torch.Generator().manual_seed(20))
        torch.manual_seed(21)
        released = source.release(tokens, torch.randn(V, E), output_table=output_table).released
        if source is layer:
            expected = (draws, released)
    assert torch.equal(draws, expected[0]) and torch.equal(released, expected[1])
    with pytest.raises(ValueError, match="holds a LearnedSubstitution"):
        GaussianNoiseLayer.from_pretrained(folder)


def test_a_layer_built_from_plain_data_needs_its_candidates() -> None:
    layer = LearnedSubstitution(embedding_dim=E, vocab_size=V, num_candidates=2)
    assert not layer.initialised and layer.num_outputs == V
    with pytest.raises(RuntimeError, match="no candidates yet"):
        layer.release(torch.tensor([[0]]), torch.randn(V, E))
    with pytest.raises(RuntimeError, match="no candidates yet"):
        layer.mutual_information(torch.ones(V))
    with pytest.raises(ValueError, match=rf"table must have shape \({V}, {E}\)"):
        layer.initialise(torch.randn(V, E + 1), torch.randn(V, E + 1))
    table = torch.randn(V, E)
    layer.initialise(table, table)
    assert layer.initialised
    assert torch.equal(layer.candidates[:, 0], torch.arange(V))  # every token is its nearest
    with pytest.raises(ValueError, match=rf"token_ids must lie in \[0, vocab_size={V}\)"):
        layer.release(torch.tensor([[V]]), table)
    with pytest.raises(ValueError, match=rf"table must have shape \({V}, {E}\)"):
        layer.release(torch.tensor([[0]]), table[:3])
    with pytest.raises(ValueError, match=r"noise_mask must have shape \(1, 1\)"):
        layer.release(torch.tensor([[0]]), table, torch.ones(2, dtype=torch.bool))
    for arguments, message in (
        ({"embedding_dim": 0}, "embedding_dim must be a positive integer"),
        ({"num_candidates": V + 1}, rf"num_candidates must lie in \[1, {V}\]"),
        ({"num_outputs": 1}, r"num_candidates must lie in \[1, 1\]"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"epsilon": float("nan")}, "epsilon must be a finite number >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            LearnedSubstitution(
                **{"embedding_dim": E, "vocab_size": V, "num_candidates": 2, **arguments}
            )
    with pytest.raises(ValueError, match="prior_smoothing must be a finite number >= 0"):
        SubstitutionMutualInformation(prior_smoothing=-1.0)
    loss = SubstitutionMutualInformation()
    with pytest.raises(
        ValueError, match=rf"token_counts must be non-negative counts of shape \({V},\)"
    ):
        loss(layer, torch.ones(V + 1))
    with pytest.raises(ValueError, match="at least one token"):
        loss(layer, torch.zeros(V))
    with pytest.raises(TypeError, match="layer must be a LearnedSubstitution"):
        loss(GaussianNoiseLayer(E), torch.ones(V))  # type: ignore[arg-type]
