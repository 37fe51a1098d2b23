"""Kolchinsky–Tracey bounds against float64 brute force, Monte Carlo entropies and empirical MI."""

from __future__ import annotations

import math

import pytest
import torch

from mi_losses.functional import (
    kolchinsky_tracey_entropy_bounds,
    kolchinsky_tracey_mutual_information_bounds,
)
from mi_losses.options import KernelOptions
from tests.helpers import make_inputs, make_mask

ARGS = ("means_tensor", "stds_tensor", "clean_input_embeddings")


def kl(c_i, s_i, c_j, s_j):
    return (torch.log(s_j / s_i) + (s_i**2 + (c_i - c_j) ** 2) / (2 * s_j**2) - 0.5).sum()


def bhattacharyya(c_i, s_i, c_j, s_j):
    v = (s_i**2 + s_j**2) / 2
    return ((c_i - c_j) ** 2 / (8 * v) + 0.5 * torch.log(v / (s_i * s_j))).sum()


def reference(means, stds, mask, clean, granularity):
    """H_D of docs/math.md#pairwise-distance-bounds with D over P(i, j), pair by pair; returns (mean H(p_i), I_B, I_KL)."""
    b, s, _ = clean.shape
    mask = torch.ones(b, s, dtype=torch.bool) if mask is None else mask.bool()
    centres = clean + means
    if granularity == "token":
        samples = [
            ([centres[i, t]], [stds[i, t]]) for i in range(b) for t in range(s) if mask[i, t]
        ]
        active = [[True] for _ in samples]
    else:
        samples = [(list(centres[i]), list(stds[i])) for i in range(b) if mask[i].any()]
        active = [mask[i].tolist() for i in range(b) if mask[i].any()]
    entropies, bounds = [], {"b": [], "kl": []}
    for i, (c_i, s_i) in enumerate(samples):
        h = sum(
            (torch.log(s_i[p]) + 0.5 * math.log(2 * math.pi * math.e)).sum()
            for p in range(len(c_i))
            if active[i][p]
        )
        entropies.append(h)
        for name, distance in (("b", bhattacharyya), ("kl", kl)):
            terms = []
            for j, (c_j, s_j) in enumerate(samples):
                shared = [p for p in range(len(c_i)) if active[i][p] and active[j][p]]
                if shared:
                    d = sum(distance(c_i[p], s_i[p], c_j[p], s_j[p]) for p in shared)
                    terms.append(-d)
            bounds[name].append(math.log(len(terms)) - torch.logsumexp(torch.stack(terms), 0))
    if not samples:
        zero = (means.sum() + stds.sum() + clean.sum()) * 0
        return zero, zero, zero
    return (
        torch.stack(entropies).mean(),
        torch.stack(bounds["b"]).mean(),
        torch.stack(bounds["kl"]).mean(),
    )


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("pattern", ["none", "random", "empty_rows", "one_hot", "all_empty"])
def test_matches_brute_force(granularity: str, pattern: str) -> None:
    inputs = make_inputs(6, 3, 2, seed=3, requires_grad=True)
    del inputs["noisy_input_embeddings"]
    mask = make_mask(pattern, 6, 3, seed=1)
    args = [inputs[n] for n in ARGS]
    entropy = kolchinsky_tracey_entropy_bounds(*args[:2], mask, args[2], granularity=granularity)
    info = kolchinsky_tracey_mutual_information_bounds(
        *args[:2], mask, args[2], granularity=granularity
    )
    conditional, lower, upper = reference(*args[:2], mask, args[2], granularity)
    for got, want in (
        (info.lower, lower),
        (info.upper, upper),
        (entropy.lower, conditional + lower),
        (entropy.upper, conditional + upper),
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        if want.requires_grad:
            for g, w in zip(
                torch.autograd.grad(got, args, retain_graph=True),
                torch.autograd.grad(want, args, retain_graph=True),
                strict=True,
            ):
                torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)
    assert float(info.lower.detach()) <= float(info.upper.detach()) + 1e-12


def test_brackets_a_monte_carlo_mixture_entropy() -> None:
    """A 5-component mixture in 2-d with unequal stds: H by 400k samples lies between the bounds."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 1, 2, generator=g, dtype=torch.float64) * 1.5
    stds = 0.3 + torch.rand(5, 1, 2, generator=g, dtype=torch.float64)
    bounds = kolchinsky_tracey_entropy_bounds(torch.zeros_like(centres), stds, None, centres)
    n = 400_000
    component = torch.randint(0, 5, (n,), generator=g)
    y = centres[component, 0] + stds[component, 0] * torch.randn(
        n, 2, generator=g, dtype=torch.float64
    )
    log_p = (
        -0.5 * ((y[:, None] - centres[None, :, 0]) / stds[None, :, 0]) ** 2
        - stds[None, :, 0].log()
        - 0.5 * math.log(2 * math.pi)
    ).sum(-1)
    log_q = torch.logsumexp(log_p, 1) - math.log(5)
    entropy, error = float(-log_q.mean()), float(log_q.std()) / math.sqrt(n)
    assert float(bounds.lower) - 4 * error <= entropy <= float(bounds.upper) + 4 * error
    assert float(bounds.upper) - float(bounds.lower) > 0.01  # a real bracket, not a point


def empirical_channel_mi(centres, stds, samples_per_component, generator):
    """Monte Carlo ``I(X; Y)`` with X uniform over the N components: the KT bounds' truth."""
    n, d = centres.shape
    component = torch.arange(n).repeat(samples_per_component)
    noise = torch.randn(component.shape[0], d, generator=generator, dtype=torch.float64)
    y = centres[component] + stds[component] * noise
    log_p = (-0.5 * ((y[:, None] - centres[None]) / stds[None]) ** 2 - stds[None].log()).sum(-1)
    own = log_p.gather(1, component[:, None])[:, 0]
    terms = own - (torch.logsumexp(log_p, 1) - math.log(n))
    return float(terms.mean()), float(terms.std()) / math.sqrt(terms.shape[0])


@pytest.mark.parametrize("dim", [1, 4])
@pytest.mark.parametrize("snr", [0.5, 2.0])
@pytest.mark.parametrize("batch", [8, 32])
def test_gaussian_channel_grid_brackets_the_empirical_channel_mi(dim, snr, batch) -> None:
    """Truth = MI of the empirical channel (X uniform over this batch's clean samples), by MC."""
    g = torch.Generator().manual_seed(dim * 100 + batch)
    clean = snr * torch.randn(batch, 1, dim, generator=g, dtype=torch.float64)
    stds = torch.ones_like(clean) * (
        0.5 + torch.rand(batch, 1, 1, generator=g, dtype=torch.float64)
    )
    bounds = kolchinsky_tracey_mutual_information_bounds(torch.zeros_like(clean), stds, None, clean)
    truth, error = empirical_channel_mi(clean[:, 0], stds[:, 0], 4000, g)
    assert float(bounds.lower) - 4 * error <= truth <= float(bounds.upper) + 4 * error
    assert float(bounds.upper) <= math.log(batch) + 1e-9


@pytest.mark.slow
def test_gradcheck_and_gradgradcheck() -> None:
    inputs = make_inputs(4, 2, 2, seed=5, requires_grad=True)
    mask = make_mask("random", 4, 2, seed=2)
    args = [inputs[n] for n in ARGS]
    for granularity in ("sequence", "token"):
        for fn in (kolchinsky_tracey_entropy_bounds, kolchinsky_tracey_mutual_information_bounds):

            def f(means, stds, clean, fn=fn, granularity=granularity):
                return tuple(fn(means, stds, mask, clean, granularity=granularity))

            assert torch.autograd.gradcheck(f, args)
            assert torch.autograd.gradgradcheck(f, args)


def test_inactive_positions_are_never_read() -> None:
    inputs = make_inputs(6, 4, 3, seed=6)
    mask = make_mask("random", 6, 4, seed=3)
    dirty = {k: v.clone() for k, v in inputs.items()}
    for name in ARGS:
        dirty[name][~mask] = math.nan
    dirty["stds_tensor"][~mask] = -1.0
    for granularity in ("sequence", "token"):
        clean_args = [inputs[n].clone().requires_grad_(True) for n in ARGS]
        dirty_args = [dirty[n].clone().requires_grad_(True) for n in ARGS]
        want = kolchinsky_tracey_mutual_information_bounds(
            *clean_args[:2], mask, clean_args[2], granularity=granularity
        )
        got = kolchinsky_tracey_mutual_information_bounds(
            *dirty_args[:2], mask, dirty_args[2], granularity=granularity
        )
        torch.testing.assert_close(got.lower, want.lower, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.upper, want.upper, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad(got.lower + got.upper, dirty_args)
        for grad in grads:
            assert bool(grad.isfinite().all()) and bool((grad[~mask] == 0).all())


def test_float32_and_blocks() -> None:
    inputs = make_inputs(40, 3, 5, seed=7, offset=30.0)
    args = [inputs[n] for n in ARGS]
    want = kolchinsky_tracey_mutual_information_bounds(*args[:2], None, args[2])
    got = kolchinsky_tracey_mutual_information_bounds(
        *[a.float() for a in args[:2]], None, args[2].float()
    )
    assert got.lower.dtype == torch.float32
    torch.testing.assert_close(got.lower.double(), want.lower, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.upper.double(), want.upper, rtol=1e-4, atol=1e-4)


def test_bad_inputs() -> None:
    inputs = make_inputs(4, 2, 3, seed=8)
    args = [inputs[n] for n in ARGS]
    with pytest.raises(ValueError, match="stds_tensor must have shape"):
        kolchinsky_tracey_entropy_bounds(args[0], args[1][:, :1], None, args[2])
    with pytest.raises(ValueError, match="granularity"):
        kolchinsky_tracey_entropy_bounds(*args[:2], None, args[2], granularity="word")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stds_tensor"):
        kolchinsky_tracey_mutual_information_bounds(args[0], -args[1], None, args[2])
    with pytest.raises(ValueError, match="noise_mask must have shape"):
        kolchinsky_tracey_mutual_information_bounds(*args[:2], torch.ones(4, 3), args[2])
    with pytest.raises(ValueError, match="kernel must be one of"):
        kolchinsky_tracey_entropy_bounds(*args[:2], None, args[2], kernel="fast")  # type: ignore[arg-type]


@pytest.mark.parametrize(("dim", "snr"), [(1, 1.0), (4, 0.5), (4, 4.0)])
def test_bhattacharyya_bound_is_below_the_population_mi_on_average(dim, snr) -> None:
    """``E[I_empirical] <= I`` (concavity of entropy), so the KT lower bound is a lower bound on
    the population MI of the Gaussian channel in expectation; the mean over seeds stays below
    ``d/2 log(1 + snr^2)`` within 3 standard errors. The KL bound is capped at ``log N``."""
    truth = 0.5 * dim * math.log(1 + snr**2)
    lowers, uppers = [], []
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        clean = snr * torch.randn(32, 1, dim, generator=g, dtype=torch.float64)
        bounds = kolchinsky_tracey_mutual_information_bounds(
            torch.zeros_like(clean), torch.ones_like(clean), None, clean
        )
        lowers.append(float(bounds.lower))
        uppers.append(float(bounds.upper))
    lower = torch.tensor(lowers)
    assert float(lower.mean()) <= truth + 3 * float(lower.std()) / math.sqrt(len(lowers))
    assert max(uppers) <= math.log(32) + 1e-9


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_kl_bound_is_the_same_on_every_kernel_path(granularity: str) -> None:
    """The KL bound runs through the pairwise kernel: the reference path and the streaming path
    in one block and in many (a tiny budget) give the same values and gradients."""
    inputs = make_inputs(10, 3, 4, seed=11, requires_grad=True)
    mask = make_mask("random", 10, 3, seed=4)
    args = [inputs[n] for n in ARGS]
    results = []
    for kernel in ("reference", "streaming", KernelOptions("streaming", max_block_bytes=64)):
        bounds = kolchinsky_tracey_mutual_information_bounds(
            *args[:2], mask, args[2], granularity=granularity, kernel=kernel
        )
        results.append((bounds.upper, *torch.autograd.grad(bounds.upper, args)))
    for got in results[1:]:
        for g, w in zip(got, results[0], strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_kl_bound_float32_far_from_the_origin() -> None:
    """Near-duplicate samples 1e4 stds from the batch mean: the expanded KL loses every digit in
    float32; the kernel's rounding check re-evaluates them, within 1e-4 of float64."""
    g = torch.Generator().manual_seed(12)
    clean = 1e4 * torch.randn(12, 2, 3, generator=g, dtype=torch.float64)
    clean[6:] = clean[:6] + 1e-2 * torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    stds = 0.5 + torch.rand(12, 2, 3, generator=g, dtype=torch.float64)
    means = torch.zeros_like(clean)
    x32 = [t.float() for t in (means, stds, clean)]
    want = reference(*[t.double() for t in x32[:2]], None, x32[2].double(), "sequence")[2]
    got = kolchinsky_tracey_mutual_information_bounds(*x32[:2], None, x32[2]).upper
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    unchecked = kolchinsky_tracey_mutual_information_bounds(
        *x32[:2], None, x32[2], kernel=KernelOptions(accuracy_check=False)
    ).upper
    assert abs(float(unchecked) - float(want)) > 1e-3  # the check is what makes it right


def test_torch_func_grad_equals_autograd() -> None:
    """``torch.func.grad`` runs (the kernel's reference path; Bhattacharyya blocks without
    checkpoints, whose saved-tensor hooks transforms refuse) and equals autograd."""
    inputs = make_inputs(6, 3, 4, seed=13)
    mask = make_mask("random", 6, 3, seed=5)
    args = [inputs[n] for n in ARGS]

    def total(means, stds, clean):
        bounds = kolchinsky_tracey_mutual_information_bounds(means, stds, mask, clean)
        return bounds.lower + bounds.upper

    got = torch.func.grad(total, argnums=(0, 1, 2))(*args)
    leaves = [a.clone().requires_grad_(True) for a in args]
    want = torch.autograd.grad(total(*leaves), leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_torch_compile_equals_eager() -> None:
    inputs = make_inputs(6, 3, 4, seed=14)
    args = [inputs[n] for n in ARGS]

    def both(means, stds, clean):
        return tuple(kolchinsky_tracey_entropy_bounds(means, stds, None, clean))

    for got, want in zip(torch.compile(both)(*args), both(*args), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
