"""Both noise layers: shapes, masks, bounds, context (in)dependence, gradients, option checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mi_losses.functional import vocabulary_noise_parameters
from mi_losses.noise import (
    GaussianNoiseLayer,
    IsotropicNoise,
    NoisyEmbeddings,
    SequenceGaussianNoiseLayer,
    draw_noise,
)

E = 8
LAYERS: dict[str, Any] = {
    "gaussian": lambda **kw: GaussianNoiseLayer(embedding_dim=E, hidden_dim=16, **kw),
    "sequence": lambda **kw: SequenceGaussianNoiseLayer(
        embedding_dim=E, hidden_dim=16, num_heads=2, feedforward_dim=32, **kw
    ),
}


def randomise_heads(layer: nn.Module, scale: float = 3.0) -> None:
    """Give the zero-initialised heads large random weights, so the bounds and context matter."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for head in (layer.head.mean_head, layer.head.std_head):
            head.weight.copy_(scale * torch.randn(head.weight.shape, generator=generator))
            head.bias.copy_(scale * torch.randn(head.bias.shape, generator=generator))


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_shapes_and_initial_values(kind: str) -> None:
    torch.manual_seed(0)
    layer = LAYERS[kind](init_std=0.2)
    x = torch.randn(3, 5, E)
    out = layer(x)
    assert isinstance(out, NoisyEmbeddings)
    assert out.noisy.shape == out.means.shape == out.stds.shape == (3, 5, E)
    assert torch.equal(out.means, torch.zeros_like(x))
    torch.testing.assert_close(out.stds, torch.full_like(x, 0.2))
    assert not torch.equal(out.noisy, x)  # mask None: every position noised


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_clean_where_the_noise_mask_is_false(kind: str) -> None:
    torch.manual_seed(0)
    layer = LAYERS[kind](init_std=0.5)
    x = torch.randn(2, 6, E)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    out = layer(x, mask)
    assert torch.equal(out.noisy[~mask], x[~mask])
    assert bool((out.noisy[mask] != x[mask]).all())


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_mean_and_std_stay_within_their_bounds(kind: str) -> None:
    torch.manual_seed(0)
    layer = LAYERS[kind](min_std=0.01, max_std=0.5, init_std=0.1, mean_scale=0.03)
    randomise_heads(layer, scale=50.0)
    with torch.no_grad():
        out = layer(10 * torch.randn(4, 7, E))
    assert float(out.means.abs().max()) <= 0.03 + 1e-7
    assert float(out.means.abs().max()) > 0.029  # the bound is reached, not just respected
    assert float(out.stds.min()) >= 0.01 * (1 - 1e-6)
    assert float(out.stds.max()) <= 0.5 * (1 + 1e-6)
    assert float(out.stds.min()) < 0.011 and float(out.stds.max()) > 0.49


def test_zero_mean_scale_learns_the_std_only() -> None:
    layer = GaussianNoiseLayer(embedding_dim=E, mean_scale=0.0)
    assert not any(p.requires_grad for p in layer.head.mean_head.parameters())
    assert torch.equal(layer(torch.randn(2, 3, E)).means, torch.zeros(2, 3, E))


def _parameters_at(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = layer(x)
    return torch.cat([out.means, out.stds], dim=-1)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_context_dependence(kind: str) -> None:
    """The sequence layer's mean/std at position 0 move when position 3 changes; the other's don't."""
    torch.manual_seed(0)
    layer = LAYERS[kind]().eval()
    randomise_heads(layer, scale=0.5)
    x = torch.randn(1, 5, E)
    changed = x.clone()
    changed[0, 3] = torch.randn(E)
    before, after = _parameters_at(layer, x), _parameters_at(layer, changed)
    assert not torch.allclose(before[0, 3], after[0, 3])  # the changed position itself
    others = [0, 1, 2, 4]
    if kind == "sequence":
        assert layer.context_free is False
        assert (before[0, others] - after[0, others]).abs().max() > 1e-4
    else:
        assert layer.context_free is True
        assert torch.equal(before[0, others], after[0, others])


def test_sequence_layer_ignores_padding_keys() -> None:
    torch.manual_seed(0)
    layer = LAYERS["sequence"]().eval()
    randomise_heads(layer, scale=0.5)
    x = torch.randn(1, 6, E)
    attention = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    changed = x.clone()
    changed[0, 4:] = 100 * torch.randn(2, E)
    a = layer(x, attention, attention_mask=attention)
    b = layer(changed, attention, attention_mask=attention)
    torch.testing.assert_close(a.means[0, :4], b.means[0, :4])
    torch.testing.assert_close(a.stds[0, :4], b.stds[0, :4])
    # Without attention_mask the noise mask decides the keys; an all-false row reads everything.
    out = layer(x, torch.zeros(1, 6, dtype=torch.bool))
    assert torch.equal(out.noisy, x) and bool(torch.isfinite(out.stds).all())


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_gradients_reach_every_parameter(kind: str) -> None:
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    randomise_heads(layer, scale=0.1)
    x = torch.randn(2, 4, E)
    out = layer(x, torch.ones(2, 4, dtype=torch.bool))
    (out.noisy.square().sum() + out.stds.log().sum()).backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name


def test_gaussian_vocabulary_parameters_match_the_forward_pass() -> None:
    torch.manual_seed(0)
    layer = GaussianNoiseLayer(embedding_dim=E, hidden_dim=16).double()
    randomise_heads(layer, scale=0.3)
    table = torch.randn(11, E, dtype=torch.float64)
    means, stds = layer.vocabulary_parameters(table)
    out = layer(table.unsqueeze(0))
    torch.testing.assert_close(means, out.means[0])
    torch.testing.assert_close(stds, out.stds[0])
    rows = torch.tensor([3, 0, 3])
    torch.testing.assert_close(layer.vocabulary_parameters(table, rows)[1], stds[rows])
    chunked = vocabulary_noise_parameters(layer, table, chunk_size=4)
    torch.testing.assert_close(chunked[0], means)
    torch.testing.assert_close(chunked[1], stds)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GaussianNoiseLayer(embedding_dim=0), "embedding_dim must be a positive integer"),
        (lambda: GaussianNoiseLayer(embedding_dim=4, hidden_dim=2.5), "hidden_dim must be"),
        (
            lambda: GaussianNoiseLayer(embedding_dim=4, min_std=0.5, init_std=0.1),
            "0 < min_std <= init_std <= max_std",
        ),
        (lambda: GaussianNoiseLayer(embedding_dim=4, mean_scale=-1.0), "mean_scale must be >= 0"),
        (
            lambda: GaussianNoiseLayer(embedding_dim=4, max_std=float("inf")),
            "max_std must be a finite",
        ),
        (
            lambda: SequenceGaussianNoiseLayer(embedding_dim=4, hidden_dim=10, num_heads=4),
            "hidden_dim must be divisible by num_heads",
        ),
        (lambda: SequenceGaussianNoiseLayer(embedding_dim=4, dropout=1.0), "dropout must lie in"),
        (lambda: SequenceGaussianNoiseLayer(embedding_dim=4, num_layers=0), "num_layers must be"),
    ],
)
def test_invalid_options_are_named(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_invalid_inputs_are_named(kind: str) -> None:
    layer = LAYERS[kind]()
    with pytest.raises(ValueError, match=r"embeddings must have shape \(B, S, 8\)"):
        layer(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"noise_mask must have shape \(2, 4\)"):
        layer(torch.randn(2, 4, E), torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("shape", [(2, 0), (0, 3)])
def test_an_empty_batch_gives_empty_outputs(kind: str, shape: tuple[int, int]) -> None:
    layer = LAYERS[kind]()
    x = torch.randn(*shape, E, requires_grad=True)
    masks: list[dict[str, torch.Tensor | None]] = [{}, {"noise_mask": torch.ones(shape)}]
    if kind == "sequence":
        masks.append({"noise_mask": None, "attention_mask": torch.ones(shape, dtype=torch.bool)})
    for mask in masks:
        out = layer(x, **mask)
        assert out.noisy.shape == out.means.shape == out.stds.shape == (*shape, E)
        (out.noisy.sum() + out.stds.sum()).backward()  # a graph, with nothing in it


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_masks_are_bool_or_exactly_zero_and_one(kind: str) -> None:
    torch.manual_seed(0)
    layer = LAYERS[kind](init_std=0.5)
    x = torch.randn(2, 4, E)
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    names = ["noise_mask", "attention_mask"] if kind == "sequence" else ["noise_mask"]
    for name in names:
        torch.manual_seed(1)
        expected = layer(x, **{name: mask})
        for dtype in (torch.float32, torch.int64, torch.uint8):
            torch.manual_seed(1)
            out = layer(x, **{name: mask.to(dtype)})
            assert all(torch.equal(a, b) for a, b in zip(out, expected, strict=True)), dtype
        half = torch.where(mask, 0.5, 0.0)  # not read as true everywhere: refused
        message = rf"{type(layer).__name__}: {name} must be bool or hold only 0 and 1, got 6 "
        with pytest.raises(ValueError, match=message + r"other value\(s\), e.g. 0.5"):
            layer(x, **{name: half})
        with pytest.raises(ValueError, match=rf"{name} must be bool or hold only 0 and 1, .* 2"):
            layer(x, **{name: 2 * mask.long()})
        with pytest.raises(ValueError, match=rf"{name} must be a torch.Tensor or None, got list"):
            layer(x, **{name: mask.tolist()})


def _nan_padded(x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN, inf and -inf at the padding positions."""
    values = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(E)[:E]
    return torch.where(padding.unsqueeze(-1), values, x)


@pytest.mark.parametrize(
    ("kind", "by"),
    [("gaussian", "noise_mask"), ("sequence", "noise_mask"), ("sequence", "attention_mask")],
)
def test_padding_is_never_read(kind: str, by: str) -> None:
    """NaN and inf at the positions not read change nothing else, values nor gradients.

    The context-free layer reads the noised positions; the sequence layer the attended ones
    (``attention_mask``), else the noised ones.
    """
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    randomise_heads(layer, scale=0.5)
    x = torch.randn(2, 6, E)
    read = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    noise = read.clone()
    noise[:, 0] = False  # a special token: attended, not noised
    masks = {"noise_mask": noise if by == "attention_mask" else read}
    if by == "attention_mask":
        masks["attention_mask"] = read
    noised = masks["noise_mask"]
    results = []
    other_padding = torch.where(read.unsqueeze(-1), x, 100 * torch.randn_like(x))
    for inputs in (x, _nan_padded(x, ~read), other_padding):
        layer.zero_grad()
        torch.manual_seed(1)
        out = layer(inputs, **masks)
        (out.noisy[noised].square().sum() + out.stds[noised].log().sum()).backward()
        grads = [p.grad.clone() for p in layer.parameters() if p.grad is not None]
        assert all(bool(torch.isfinite(g).all()) for g in grads)
        torch.testing.assert_close(out.noisy[~noised], inputs[~noised], equal_nan=True)
        results.append((out.noisy[read], out.means[read], out.stds[read], grads))
    for other in results[1:]:
        for a, b in zip(results[0][:3], other[:3], strict=True):
            assert torch.equal(a, b)
        for a, b in zip(results[0][3], other[3], strict=True):
            torch.testing.assert_close(a, b)


def test_draw_noise_and_the_token_layers_take_the_same_masks() -> None:
    """``draw_noise`` (public, and the token layers' draw) checks the mask as the layers do."""
    torch.manual_seed(0)
    clean, means, stds = torch.randn(2, 3, E), torch.zeros(2, 3, E), torch.ones(2, 3, E)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    torch.manual_seed(1)
    expected = draw_noise(clean, means, stds, mask).noisy
    torch.manual_seed(1)
    assert torch.equal(draw_noise(clean, means, stds, mask.long()).noisy, expected)
    assert torch.equal(expected[~mask], clean[~mask]) and bool(
        (expected[mask] != clean[mask]).all()
    )
    with pytest.raises(ValueError, match=r"noise_mask must be bool or hold only 0 and 1, .* 0.5"):
        draw_noise(clean, means, stds, mask * 0.5)
    with pytest.raises(ValueError, match=r"noise_mask must have shape \(2, 3\), got \(3, 2\)"):
        draw_noise(clean, means, stds, mask.T)
    ids, table = torch.tensor([[1, 2, 3], [3, 0, 1]]), torch.randn(4, E)
    with pytest.raises(ValueError, match=r"noise_mask must be bool or hold only 0 and 1"):
        IsotropicNoise(0.5)(ids, table, mask * 0.5)
