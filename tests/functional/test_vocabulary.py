"""Known-prior (vocabulary) mutual information against float64 brute force and exact integrals."""

from __future__ import annotations

import math

import pytest
import torch

from mi_losses import VocabularyMutualInformation, keys
from mi_losses.functional import (
    prior_entropy,
    token_prior,
    vocabulary_mutual_information,
    vocabulary_mutual_information_estimate,
    vocabulary_noise_parameters,
)
from mi_losses.kernels.directions import Direction
from mi_losses.kernels.reference import pair_scores
from mi_losses.kernels.vocabulary import Vocabulary, chunk_scores, query_side, rows
from mi_losses.noise import GaussianNoiseLayer
from tests import vocabulary_reference as ref

V, E, B, S = 7, 3, 3, 5


def make_channel(
    seed: int = 0,
    *,
    v: int = V,
    e: int = E,
    b: int = B,
    s: int = S,
    zero_rows: tuple[int, ...] = (2,),
    std_range: tuple[float, float] = (0.5, 1.5),
    dtype: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    """A small vocabulary channel with tokens drawn from the prior and a random mask."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(v, e, generator=g, dtype=torch.float64)
    means = 0.3 * torch.randn(v, e, generator=g, dtype=torch.float64)
    low, high = std_range
    stds = low + (high - low) * torch.rand(v, e, generator=g, dtype=torch.float64)
    prior = 0.1 + torch.rand(v, generator=g, dtype=torch.float64)
    prior[list(zero_rows)] = 0.0
    prior = prior / prior.sum()
    tokens = torch.multinomial(prior, b * s, replacement=True, generator=g).view(b, s)
    noise = torch.randn(b, s, e, generator=g, dtype=torch.float64)
    noisy = table[tokens] + means[tokens] + stds[tokens] * noise
    mask = torch.rand(b, s, generator=g) < 0.7
    tensors = {"table": table, "means": means, "stds": stds, "prior": prior, "noisy": noisy}
    out = {k: t.to(dtype) for k, t in tensors.items()}
    return {**out, "tokens": tokens, "mask": mask}


def call(c: dict[str, torch.Tensor], mask: torch.Tensor | None = None, **kwargs: object):
    return vocabulary_mutual_information(
        c["means"], c["stds"], mask, c["tokens"], c["noisy"], c["table"], c["prior"], **kwargs
    )


def brute(c: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
    return ref.vocabulary_mutual_information(
        c["tokens"], c["noisy"], c["table"], c["prior"], c["means"], c["stds"], mask
    )


DIFFERENTIABLE = ("noisy", "table", "means", "stds")


@pytest.mark.parametrize("chunk", [1, 3, V, 100])
@pytest.mark.parametrize("masked", [False, True])
def test_values_and_gradients_match_brute_force(chunk: int, masked: bool) -> None:
    c = make_channel(chunk)
    for name in DIFFERENTIABLE:
        c[name].requires_grad_(True)
    mask = c["mask"] if masked else None
    losses: dict[str, torch.Tensor] = {}
    value = call(c, mask, losses=losses, vocab_chunk_size=chunk)
    expected = brute(c, mask)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10)
    inputs = [c[name] for name in DIFFERENTIABLE]
    grads = torch.autograd.grad(value, inputs)
    expected_grads = torch.autograd.grad(expected, inputs)
    for name, got, want in zip(DIFFERENTIABLE, grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10, msg=name)
    total = losses[keys.MIXTURE_ENTROPY] + losses[keys.STD_LOG]
    torch.testing.assert_close(total, losses[keys.MUTUAL_INFORMATION], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses[keys.MUTUAL_INFORMATION], value.detach())
    own, log_q = ref.vocabulary_terms(
        c["tokens"], c["noisy"], c["table"], c["prior"], c["means"], c["stds"], mask
    )
    torch.testing.assert_close(losses[keys.MIXTURE_ENTROPY], -log_q.mean().detach())
    torch.testing.assert_close(losses[keys.STD_LOG], own.mean().detach())


def test_prior_gradient_matches_brute_force() -> None:
    c = make_channel(1, zero_rows=())
    c["prior"] = (3.0 * c["prior"]).requires_grad_(True)
    got = torch.autograd.grad(call(c, vocab_chunk_size=2), c["prior"])[0]
    want = torch.autograd.grad(brute(c), c["prior"])[0]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.slow
def test_gradcheck_and_gradgradcheck() -> None:
    c = make_channel(2, v=5, e=2, b=2, s=3, zero_rows=(1,))
    positive = make_channel(2, v=5, e=2, b=2, s=3, zero_rows=())["prior"]
    inputs = [c["noisy"], c["table"], positive, c["means"], c["stds"]]
    inputs = [t.clone().requires_grad_(True) for t in inputs]

    def f(noisy, table, prior, means, stds):
        return vocabulary_mutual_information(
            means, stds, c["mask"], c["tokens"], noisy, table, prior, vocab_chunk_size=2
        )

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)

    def g(noisy, means, stds):  # zero-prior row 1 included, prior not perturbed
        return vocabulary_mutual_information(
            means, stds, None, c["tokens"], noisy, c["table"], c["prior"], vocab_chunk_size=3
        )

    second = [c["noisy"], c["means"], c["stds"]]
    second = [t.clone().requires_grad_(True) for t in second]
    assert torch.autograd.gradcheck(g, second)
    assert torch.autograd.gradgradcheck(g, second)


def test_zero_prior_rows_and_inactive_positions_are_never_read() -> None:
    c = make_channel(3, zero_rows=(2, 5))
    mask = c["mask"]
    for name in DIFFERENTIABLE:
        c[name].requires_grad_(True)
    clean_value = call(c, mask, vocab_chunk_size=3)
    clean_grads = torch.autograd.grad(clean_value, [c[n] for n in DIFFERENTIABLE])

    dirty = {k: t.detach().clone() for k, t in c.items()}
    for name in ("table", "means", "stds"):
        dirty[name][[2, 5]] = math.nan
    dirty["stds"][5] = -1.0
    dirty["noisy"][~mask] = math.nan
    dirty["tokens"][~mask] = -100
    for name in DIFFERENTIABLE:
        dirty[name].requires_grad_(True)
    value = call(dirty, mask, vocab_chunk_size=3)
    grads = torch.autograd.grad(value, [dirty[n] for n in DIFFERENTIABLE])
    torch.testing.assert_close(value, clean_value, rtol=1e-12, atol=1e-12)
    for name, got, want in zip(DIFFERENTIABLE, grads, clean_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)
    assert bool((grads[0][~mask] == 0).all())
    for grad in grads[1:]:
        assert bool((grad[[2, 5]] == 0).all())


def test_each_term_is_at_most_minus_log_prior_and_the_mean_below_entropy() -> None:
    c = make_channel(4, v=6, e=2, b=64, s=32, std_range=(0.05, 0.2))
    estimate = vocabulary_mutual_information_estimate(
        c["means"], c["stds"], None, c["tokens"], c["noisy"], c["table"], c["prior"]
    )
    assert estimate.per_query is not None
    bound = -c["prior"][c["tokens"].reshape(-1)].log()
    assert bool((estimate.per_query <= bound + 1e-12).all())
    entropy = float(prior_entropy(c["prior"]))
    standard_error = float(estimate.per_query.std()) / math.sqrt(estimate.per_query.numel())
    assert float(estimate.value) <= entropy + 3 * standard_error
    assert float(estimate.value) > 0.5 * entropy  # little noise: most of H(X) leaks


@pytest.mark.parametrize("std_scale", [0.3, 1.0, 3.0])
def test_converges_to_the_exact_mutual_information(std_scale: float) -> None:
    """1-d channel with 4 points, unequal stds and prior; exact MI by numerical integration."""
    g = torch.Generator().manual_seed(5)
    table = torch.tensor([[-1.0], [0.0], [0.5], [2.0]], dtype=torch.float64)
    means = torch.tensor([[0.2], [0.0], [-0.1], [0.0]], dtype=torch.float64)
    stds = std_scale * torch.tensor([[0.5], [1.0], [0.7], [1.5]], dtype=torch.float64)
    prior = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    exact = ref.exact_mutual_information_1d((table + means)[:, 0], stds[:, 0], prior)
    n = 100_000
    tokens = torch.multinomial(prior, n, replacement=True, generator=g).view(1, n)
    noise = torch.randn(1, n, 1, generator=g, dtype=torch.float64)
    noisy = table[tokens] + means[tokens] + stds[tokens] * noise
    estimate = vocabulary_mutual_information_estimate(
        means, stds, None, tokens, noisy, table, prior
    )
    assert estimate.per_query is not None
    standard_error = float(estimate.per_query.std()) / math.sqrt(n)
    assert abs(float(estimate.value) - exact) <= 4 * standard_error + 1e-6
    assert 0 < exact < float(prior_entropy(prior))


def test_float32_agrees_with_float64_at_embedding_scale() -> None:
    c64 = make_channel(6, v=50, e=32, b=4, s=16, zero_rows=(), std_range=(0.05, 0.3))
    c32 = {k: t.float() if t.is_floating_point() else t for k, t in c64.items()}
    value64 = call(c64, vocab_chunk_size=16)
    value32 = call(c32, vocab_chunk_size=16)
    assert value32.dtype == torch.float32
    torch.testing.assert_close(value32.double(), value64, rtol=1e-4, atol=1e-3)


def test_prior_is_normalised_and_empty_mask_gives_zero() -> None:
    c = make_channel(7)
    scaled = dict(c, prior=c["prior"] * 17.0)
    torch.testing.assert_close(call(scaled), call(c), rtol=1e-12, atol=1e-12)
    noisy = c["noisy"].clone().requires_grad_(True)
    empty = torch.zeros(B, S, dtype=torch.bool)
    value = vocabulary_mutual_information(
        c["means"], c["stds"], empty, c["tokens"], noisy, c["table"], c["prior"]
    )
    assert float(value.detach()) == 0.0
    (grad,) = torch.autograd.grad(value, noisy)
    assert bool((grad == 0).all())


@pytest.mark.parametrize("units", ["nats", "bits"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_module_equals_functional(units: str, reduction: str) -> None:
    c = make_channel(8)
    module = VocabularyMutualInformation(vocab_chunk_size=2, units=units, reduction=reduction)
    got = module(c["means"], c["stds"], c["mask"], c["tokens"], c["noisy"], c["table"], c["prior"])
    estimate = vocabulary_mutual_information_estimate(
        c["means"], c["stds"], c["mask"], c["tokens"], c["noisy"], c["table"], c["prior"]
    )
    scale = 1.0 if units == "nats" else 1 / math.log(2)
    assert estimate.per_query is not None
    expected = {
        "mean": estimate.value,
        "sum": estimate.value * int(c["mask"].sum()),
        "none": estimate.per_query,
    }[reduction]
    torch.testing.assert_close(got, expected * scale)
    assert int(module.last_num_queries) == int(c["mask"].sum())
    for key, value in estimate.components.items():
        torch.testing.assert_close(module.component_losses[key], value * scale)
    assert set(module.component_losses) == {
        keys.MIXTURE_ENTROPY,
        keys.STD_LOG,
        keys.MUTUAL_INFORMATION,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(noisy=c["noisy"][0]), "noisy_input_embeddings must have 3 dimensions"),
        (lambda c: c.update(table=c["table"][:, :2]), "embedding_table must have shape"),
        (lambda c: c.update(means=c["means"][:4]), "vocabulary_means must have shape"),
        (lambda c: c.update(stds=c["stds"][:, :1]), "vocabulary_stds must have shape"),
        (lambda c: c.update(prior=c["prior"][:3]), "token_prior must have shape"),
        (lambda c: c.update(prior=-c["prior"]), "token_prior must be finite and non-negative"),
        (
            lambda c: c.update(stds=c["stds"] * 0),
            "vocabulary_stds (rows with token_prior > 0) must be",
        ),
        (lambda c: c.update(tokens=c["tokens"].float()), "token_ids must be an integer"),
        (lambda c: c.update(tokens=c["tokens"][:, :2]), "token_ids must have shape"),
        (lambda c: c.update(tokens=c["tokens"] + V), "token_ids at active positions must lie"),
        (lambda c: c.update(tokens=torch.full_like(c["tokens"], 2)), "prior > 0"),
        (lambda c: c.update(mask=c["mask"][:, :2]), "noise_mask must have shape"),
        (
            lambda c: c.update(noisy=c["noisy"].long()),
            "noisy_input_embeddings must have a floating",
        ),
    ],
)
def test_bad_inputs_name_the_argument(change, message: str) -> None:
    c = make_channel(9)
    change(c)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(c, c["mask"])
    with pytest.raises(ValueError, match="vocab_chunk_size"):
        call(make_channel(9), vocab_chunk_size=0)
    with pytest.raises(ValueError, match="vocab_chunk_size"):
        VocabularyMutualInformation(vocab_chunk_size=0)


def test_noise_parameters_of_a_layer() -> None:
    torch.manual_seed(0)
    layer = GaussianNoiseLayer(embedding_dim=E, hidden_dim=8, init_std=0.3).double()
    torch.nn.init.normal_(layer.head.mean_head.weight, std=0.5)
    torch.nn.init.normal_(layer.head.std_head.weight, std=0.5)
    table = torch.randn(V, E, dtype=torch.float64)
    state = torch.get_rng_state()
    means, stds = vocabulary_noise_parameters(layer, table, chunk_size=3)
    assert torch.equal(torch.get_rng_state(), state)
    for v in range(V):
        out = layer(table[v].view(1, 1, E))
        torch.testing.assert_close(means[v], out.means[0, 0])
        torch.testing.assert_close(stds[v], out.stds[0, 0])
    assert means.requires_grad  # keeps the layer's graph: the estimate can train it
    with pytest.raises(ValueError, match="chunk_size"):
        vocabulary_noise_parameters(layer, table, chunk_size=0)


def test_token_prior() -> None:
    ids = torch.tensor([[0, 0, 1, 9], [1, 0, 3, 9]])
    mask = ids != 9
    prior = token_prior(ids, 5, smoothing=0.5, noise_mask=mask)
    expected = torch.tensor([3.5, 2.5, 0.5, 1.5, 0.5], dtype=torch.float64) / 8.5
    torch.testing.assert_close(prior, expected)
    counts = torch.tensor([3.0, 2.0, 0.0, 1.0, 0.0])
    torch.testing.assert_close(token_prior(counts, 5, smoothing=0.5, counts=True), expected)
    unsmoothed = token_prior(ids, 5, smoothing=0.0, noise_mask=mask)
    assert float(unsmoothed[2]) == 0.0 and float(unsmoothed[4]) == 0.0
    # An unseen token in the evaluated batch works with the smoothed prior.
    c = make_channel(10, v=5, zero_rows=())
    c["tokens"] = torch.full_like(c["tokens"], 4)
    assert math.isfinite(float(call(dict(c, prior=prior.to(c["table"].dtype)))))
    with pytest.raises(ValueError, match="token ids must lie"):
        token_prior(ids, 5)
    with pytest.raises(ValueError, match="smoothing"):
        token_prior(ids, 10, smoothing=-1.0)
    with pytest.raises(ValueError, match="mask must have shape"):
        token_prior(ids, 10, noise_mask=mask[0])
    with pytest.raises(ValueError, match="counts=True"):
        token_prior(counts, 5)
    with pytest.raises(ValueError, match="no mass"):
        token_prior(torch.zeros(0, dtype=torch.long), 5, smoothing=0.0)


def test_vocabulary_scores_are_the_kernels_pair_scores() -> None:
    """One score for the library: a chunk's vocabulary scores minus the log prior are the pair
    scores ``log N(y_i ; c_v, sigma_v)`` of the kernel's reference path (rows as components of
    one position), and both equal a direct float64 evaluation; rows off the support are
    ``-inf``, whatever they hold."""
    c = make_channel(3)
    support = c["prior"] > 0
    table, stds = c["table"].clone(), c["stds"].clone()
    table[~support], stds[~support] = math.nan, -1.0  # never read
    log_prior = torch.where(support, c["prior"].log(), -math.inf)
    queries = c["noisy"].flatten(0, 1)
    vocabulary = Vocabulary(table, c["means"], stds, log_prior, support)
    q, f = query_side(queries)
    got = chunk_scores(q, rows(vocabulary, 0, V, f), log_prior)
    centres = c["table"] + c["means"]
    direct = (
        -0.5 * ((queries[:, None] - centres[None]) / c["stds"][None]).square()
        - c["stds"][None].log()
        - 0.5 * math.log(2 * math.pi)
    ).sum(-1)
    torch.testing.assert_close(got[:, support], (direct + log_prior)[:, support])
    assert bool((got[:, ~support] == -math.inf).all())
    one = torch.ones(queries.shape[0], 1, dtype=torch.bool)
    pairs = Direction(
        queries[:, None], None, table[:, None], c["means"][:, None], stds[:, None], one,
        support[:, None],
    )  # fmt: skip
    kernel = pair_scores(pairs, torch.float64, check=True)
    torch.testing.assert_close(kernel.z[:, support], direct[:, support])
    torch.testing.assert_close(kernel.z[:, support], (got - log_prior)[:, support])
