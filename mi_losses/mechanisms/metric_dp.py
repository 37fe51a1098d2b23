"""Metric-DP token mechanisms: release a vocabulary token instead of a noisy embedding.

Two baselines of docs/math.md ("Attackers and baselines on one frontier"); both map an input token
$x$ to an *output* token $y$ of an output vocabulary (rows ``output_table`` ``(V_out, E)``), which
is then embedded as $W_y$.

- **Multivariate Laplace with projection** (Feyisetan et al. 2020): $z$ with density
  $\\propto \\exp(-\\varepsilon \\lVert z \\rVert_2)$ in $\\mathbb R^E$ (direction uniform on the
  sphere, radius $\\sim \\mathrm{Gamma}(E, 1/\\varepsilon)$), released
  $y = \\arg\\min_u \\lVert W_x + z - W_u \\rVert_2$. Its channel $p(y \\mid x)$ has no closed form;
  :func:`laplace_channel_log_probabilities` estimates it by Monte Carlo.
- **SanText** (Yue et al. 2021): $p(y \\mid x) \\propto \\exp(-\\varepsilon \\lVert W_x - W_y \\rVert_2 / 2)$
  over the output vocabulary, exactly (:func:`santext_log_probabilities`).

The Bayes attacker of a released token knows the channel and a prior:
$\\hat x(y) = \\arg\\max_x \\log p_x + \\log p(y \\mid x)$ (:func:`release_log_posterior`).
"""

from __future__ import annotations

import math

import torch

from mi_losses.attacks.nearest import nearest_token_ids

__all__ = [
    "channel_mutual_information",
    "laplace_channel_log_probabilities",
    "laplace_release",
    "release_log_posterior",
    "sample_multivariate_laplace",
    "santext_log_probabilities",
    "santext_release",
]


def _check_epsilon(epsilon: float) -> None:
    if not (isinstance(epsilon, int | float) and epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")


def sample_multivariate_laplace(
    num_samples: int,
    dim: int,
    epsilon: float,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(num_samples, dim)`` draws of $z$ with density $\\propto \\exp(-\\varepsilon\\lVert z\\rVert_2)$.

    Direction: a normalised standard Gaussian. Radius: $\\mathrm{Gamma}(\\text{dim}, 1/\\varepsilon)$,
    drawn exactly as a sum of ``dim`` standard exponentials over $\\varepsilon$ (so ``generator``
    controls every draw).

    Example:
        >>> sample_multivariate_laplace(4, 3, 1.0, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 3])
    """
    _check_epsilon(epsilon)
    if dim < 1 or num_samples < 0:
        raise ValueError(f"dim must be >= 1 and num_samples >= 0, got {dim} and {num_samples}")
    direction = torch.randn(num_samples, dim, generator=generator, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    uniform = torch.rand(num_samples, dim, generator=generator, dtype=torch.float64)
    radius: torch.Tensor = torch.log1p(-uniform).sum(-1, keepdim=True) / (-epsilon)
    sample: torch.Tensor = (direction * radius).to(dtype)
    return sample


def laplace_release(
    token_ids: torch.Tensor,
    table: torch.Tensor,
    epsilon: float,
    output_table: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Released output-row index for every token: nearest (L2) row of ``output_table`` to $W_x + z$.

    Args:
        token_ids: input token ids, any shape, indices into ``table`` ``(V, E)``.
        table: the input embedding table.
        epsilon: the privacy parameter, ``> 0``.
        output_table: the output vocabulary's rows ``(V_out, E)``; ``None`` = ``table``.
        generator: the random generator.

    Returns:
        int64 indices into ``output_table``, of the shape of ``token_ids``.
    """
    output = table if output_table is None else output_table
    flat = token_ids.reshape(-1)
    noise = sample_multivariate_laplace(flat.shape[0], table.shape[1], epsilon, generator=generator)
    moved = table[flat].double() + noise.double()
    released = nearest_token_ids(moved.float(), output, "l2")
    return released.reshape(token_ids.shape)


def santext_log_probabilities(
    table: torch.Tensor, output_table: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """SanText's channel $\\log p(y \\mid x)$, ``(V_in, V_out)``, exactly.

    $p(y \\mid x) = \\exp(-\\varepsilon d_{xy} / 2) / \\sum_u \\exp(-\\varepsilon d_{xu} / 2)$ with
    $d_{xy} = \\lVert W_x - W_y \\rVert_2$ (``table`` rows are the inputs, ``output_table`` rows the
    outputs), computed in float64 and returned in float32.
    """
    _check_epsilon(epsilon)
    distances = torch.cdist(table.double(), output_table.double())
    return (-0.5 * epsilon * distances).log_softmax(-1).float()


def santext_release(
    token_ids: torch.Tensor,
    log_probabilities: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Released output index for every token, drawn from row ``token_ids`` of ``log_probabilities``.

    ``log_probabilities`` is ``(V_in, V_out)`` (:func:`santext_log_probabilities`); the result has
    the shape of ``token_ids``.
    """
    flat = token_ids.reshape(-1)
    probabilities = log_probabilities[flat].double().exp()
    draws = torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)
    return draws.reshape(token_ids.shape)


@torch.no_grad()
def laplace_channel_log_probabilities(
    table: torch.Tensor,
    epsilon: float,
    output_table: torch.Tensor | None = None,
    *,
    num_samples: int = 128,
    pseudo_count: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte Carlo estimate of the Laplace-with-projection channel $\\log p(y \\mid x)$, ``(V_in, V_out)``.

    For every input row, ``num_samples`` releases are drawn; the estimate is
    $(n_{xy} + a) / (n + a V_\\text{out})$ with the counts $n_{xy}$ and ``pseudo_count`` $a$ (no
    output has probability 0, so a Bayes attacker never rules out the true token because it was
    not drawn). Cost: ``V_in * num_samples`` nearest-row searches.
    """
    output = table if output_table is None else output_table
    counts = torch.zeros(table.shape[0], output.shape[0], dtype=torch.float64)
    rows = torch.arange(table.shape[0])
    for start in range(0, table.shape[0], 256):
        block = rows[start : start + 256].repeat_interleave(num_samples)
        released = laplace_release(block, table, epsilon, output, generator=generator)
        counts.index_put_((block, released), torch.ones(block.shape[0], dtype=torch.float64), True)
    estimate = (counts + pseudo_count) / (num_samples + pseudo_count * output.shape[0])
    return estimate.log().float()


def release_log_posterior(
    released: torch.Tensor, log_channel: torch.Tensor, log_prior: torch.Tensor
) -> torch.Tensor:
    """The Bayes attacker's normalised $\\log p(x \\mid y)$ over the inputs, ``(*released.shape, V_in)``.

    Args:
        released: output indices ``y``, any shape.
        log_channel: $\\log p(y \\mid x)$, ``(V_in, V_out)``.
        log_prior: $\\log p_x$, ``(V_in,)`` (need not be normalised).
    """
    if log_channel.ndim != 2 or log_prior.shape != log_channel.shape[:1]:
        raise ValueError(
            "log_channel must have shape (V_in, V_out) and log_prior (V_in,), got "
            f"{tuple(log_channel.shape)} and {tuple(log_prior.shape)}"
        )
    joint = log_channel.T[released.reshape(-1)] + log_prior
    return joint.log_softmax(-1).reshape(*released.shape, log_channel.shape[0])


def channel_mutual_information(
    log_channel: torch.Tensor,
    prior: torch.Tensor,
    *,
    outputs: torch.Tensor | None = None,
    num_outputs: int | None = None,
) -> torch.Tensor:
    """$I(X; Y) = \\sum_x p_x \\sum_y p(y \\mid x) \\log (p(y \\mid x) / p(y))$ in nats, exactly.

    Dense (``outputs=None``): ``log_channel`` is $\\log p(y \\mid x)$ ``(V_in, V_out)``. Sparse:
    ``log_channel`` ``(V_in, K)`` is the log probability of the output ``outputs[x, k]`` (a
    channel that reaches only ``K`` outputs from each input, e.g. a learned substitution over
    nearest candidates, :class:`~mi_losses.mechanisms.LearnedSubstitution`), and
    $p(y) = \\sum_{(x, k): \\text{outputs}[x, k] = y} p_x p(k \\mid x)$ is summed by scatter,
    with a running maximum per output as in a logsumexp. Inputs of prior 0 are dropped; a term of
    probability 0 counts 0. Differentiable in ``log_channel`` (float64 result, 0-dim).

    Args:
        log_channel: $\\log p(y \\mid x)$, ``(V_in, V_out)``, or ``(V_in, K)`` with ``outputs``.
        prior: $p_x$ ``(V_in,)``, non-negative (normalised here).
        outputs: output index of every entry of ``log_channel`` ``(V_in, K)``, int64 in
            ``[0, num_outputs)``; ``None``: dense.
        num_outputs: size of the output vocabulary (with ``outputs`` only).

    Example:
        >>> prior = torch.tensor([0.5, 0.5])
        >>> float(channel_mutual_information(torch.eye(2).clamp_min(1e-30).log(), prior))
        0.6931...
    """
    if log_channel.ndim != 2 or prior.shape != log_channel.shape[:1]:
        raise ValueError(
            "log_channel must have shape (V_in, V_out) and prior (V_in,), got "
            f"{tuple(log_channel.shape)} and {tuple(prior.shape)}"
        )
    if (outputs is None) != (num_outputs is None):
        raise ValueError("outputs and num_outputs must be given together")
    if outputs is not None and num_outputs is not None:
        if outputs.shape != log_channel.shape or outputs.dtype != torch.int64:
            raise ValueError(
                f"outputs must be int64 of shape {tuple(log_channel.shape)} like log_channel, "
                f"got {outputs.dtype} {tuple(outputs.shape)}"
            )
        if outputs.numel() and not 0 <= int(outputs.min()) <= int(outputs.max()) < num_outputs:
            raise ValueError(f"outputs must lie in [0, num_outputs={num_outputs})")
    support = prior > 0
    prior = prior.double()[support] / prior.double()[support].sum()
    log_channel = log_channel.double()[support]
    joint = log_channel + prior.log().unsqueeze(-1)
    if outputs is None:
        own_marginal = torch.logsumexp(joint, dim=0).expand_as(joint)
    else:
        assert num_outputs is not None
        index = outputs[support].reshape(-1)
        flat = joint.reshape(-1)
        peak = flat.new_full((num_outputs,), -torch.inf).scatter_reduce(
            0, index, flat.detach(), "amax"
        )
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        total = flat.new_zeros(num_outputs).index_add(0, index, (flat - peak[index]).exp())
        own_marginal = (total[index].log() + peak[index]).reshape(joint.shape)
    probabilities = log_channel.exp()
    reached = probabilities > 0
    zero = torch.zeros_like(log_channel)
    ratio = torch.where(reached, log_channel, zero) - torch.where(reached, own_marginal, zero)
    return (prior * (probabilities * ratio).sum(-1)).sum()
