"""Context-free token noise layers: the mean and std of a token depend on that token only.

Every layer here maps the vocabulary table ``W (V, E)`` to a mean shift and a std for every row,
``(means, stds)`` each ``(V, E)``; a batch of token ids ``(B, S)`` is then noised as
``y = W[t] + means[t] + stds[t] * eps`` at the noise mask. Because the channel ``p(y | t)`` is
known for every token, the exact known-prior mutual information and the Bayes-optimal attack of
``mi_losses.functional`` apply to all of them (docs/math.md, "Known-prior mutual information").

- :class:`IsotropicNoise`: one std for every token and feature, no shift (baseline).
- :class:`FrequencyRuleNoise`: the ``k`` most frequent training tokens get ``large_std``, every
  other token ``small_std``, no shift (baseline).
- :class:`LearnedTokenNoise`: an MLP of the token's clean embedding gives a bounded mean shift
  and a log-parametrised std (the learned layer; see its docstring for why it is shaped so).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mi_losses.noise import NoisyEmbeddings


class TokenNoise(nn.Module):
    """Base class: subclasses implement :meth:`vocabulary_parameters`.

    ``forward(input_ids, table, noise_mask)`` draws ``y = W[t] + means[t] + stds[t] * eps`` where
    ``noise_mask`` is true and returns the clean row elsewhere, with the means and stds ``(B, S, E)``
    of the batch's tokens.
    """

    def vocabulary_parameters(
        self, table: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(means, stds)``, each ``(R, E)``, of ``table[rows]`` (all ``V`` rows if ``None``)."""
        raise NotImplementedError

    def forward(
        self, input_ids: torch.Tensor, table: torch.Tensor, noise_mask: torch.Tensor
    ) -> NoisyEmbeddings:
        """Noise the tokens ``input_ids`` ``(B, S)`` where ``noise_mask`` ``(B, S)`` is true."""
        unique, inverse = torch.unique(input_ids, return_inverse=True)
        means, stds = self.vocabulary_parameters(table, unique)
        return draw_noise(table[input_ids], means[inverse], stds[inverse], noise_mask)


def draw_noise(
    clean: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, noise_mask: torch.Tensor
) -> NoisyEmbeddings:
    """``y = x + mu + sigma * eps`` where ``noise_mask`` ``(B, S)`` is true, ``x`` elsewhere.

    ``clean``, ``means`` and ``stds`` are ``(B, S, E)`` and are returned as given (the estimators
    never read unmasked positions).
    """
    noisy = clean + means + stds * torch.randn_like(clean)
    noisy = torch.where(noise_mask.bool().unsqueeze(-1), noisy, clean)
    return NoisyEmbeddings(noisy=noisy, means=means, stds=stds)


class IsotropicNoise(TokenNoise):
    """``y = x + std * eps``: the same std for every token and feature, no shift.

    Args:
        std: the standard deviation, ``> 0``.
    """

    def __init__(self, std: float) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.std = float(std)

    def vocabulary_parameters(
        self, table: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        size = table.shape[0] if rows is None else rows.shape[0]
        means = table.new_zeros(size, table.shape[1])
        return means, torch.full_like(means, self.std)


class FrequencyRuleNoise(TokenNoise):
    """The ``k`` most frequent training tokens get ``large_std``, every other token ``small_std``.

    Args:
        counts: training-text count of every vocabulary token, ``(V,)``.
        k: how many of the most frequent tokens get the large std.
        large_std: std of the frequent tokens.
        small_std: std of every other token.
    """

    def __init__(
        self, counts: torch.Tensor, k: int = 20, large_std: float = 2.0, small_std: float = 0.02
    ) -> None:
        super().__init__()
        if not 0 <= k <= counts.shape[0]:
            raise ValueError(f"k must lie in [0, {counts.shape[0]}], got {k}")
        if not (large_std > 0 and small_std > 0):
            raise ValueError(f"stds must be positive, got {large_std} and {small_std}")
        self.k = k
        token_stds = torch.full(counts.shape, float(small_std))
        token_stds[torch.argsort(counts, descending=True, stable=True)[:k]] = float(large_std)
        self.register_buffer("token_stds", token_stds)

    def vocabulary_parameters(
        self, table: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        all_stds: torch.Tensor = self.token_stds  # type: ignore[assignment]  # a buffer
        token_stds = all_stds if rows is None else all_stds[rows]
        stds = token_stds.to(table.dtype).unsqueeze(-1).expand(-1, table.shape[1])
        return torch.zeros_like(stds), stds.clone()


class LearnedTokenNoise(TokenNoise):
    """An MLP of the token's clean embedding gives its mean shift and std.

    ``h = GELU(Linear(LayerNorm(x)))``, ``mu = mean_scale * tanh(Linear(h))`` and
    ``sigma = exp(clamp(log(init_std) + Linear(h), log(min_std), log(max_std)))``, both heads
    zero-initialised (``mu = 0``, ``sigma = init_std`` at the start).

    Why this shape: Adam moves every parameter by about the learning rate per step whatever the
    size of its gradient. With a plain linear mean head, that is ``lr`` per coordinate of ``mu`` in
    embedding units, coherent over all tokens through the bias: at ``lr = 3e-3`` the shift grows
    by 5 % of the word embeddings' element std (0.055) per step, and after 70-100 steps it is as
    long as the token itself; the frozen model then sees mostly the shift and the run can end
    with the sentences erased (docs/minilm.md has the measurement). Here ``|mu| <= mean_scale``
    per coordinate whatever the optimiser does, so the shift stays bounded in the embedding's
    own units (``0.02``: at most a third of a token's norm). The std is log-parametrised, so a
    step changes it by a ratio (a sigmoid between ``min_std`` and ``max_std`` is nearly flat near
    a small ``init_std`` and makes large stds unreachable), and ``LayerNorm`` puts the hidden
    layer's input on unit scale.

    Args:
        embedding_dim: ``E``.
        hidden_dim: width of the hidden layer.
        min_std: lower bound of ``sigma``.
        max_std: upper bound of ``sigma``.
        init_std: ``sigma`` at initialisation, in ``[min_std, max_std]``.
        mean_scale: bound of ``|mu|`` per coordinate (``0`` = no shift, sigma only).
        vocab_size: if ``> 0``, add a learned per-token offset to ``log sigma`` (a ``(V,)``
            parameter, zero-initialised; see :meth:`warm_start`), so the layer can give single
            tokens a std of their own.
    """

    def __init__(
        self,
        embedding_dim: int,
        hidden_dim: int = 128,
        min_std: float = 1e-3,
        max_std: float = 4.0,
        init_std: float = 0.02,
        mean_scale: float = 0.05,
        vocab_size: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < min_std <= init_std <= max_std:
            raise ValueError(
                f"stds must satisfy 0 < min_std <= init_std <= max_std, got "
                f"{min_std}, {init_std}, {max_std}"
            )
        if mean_scale < 0:
            raise ValueError(f"mean_scale must be >= 0, got {mean_scale}")
        self.log_min, self.log_max = math.log(min_std), math.log(max_std)
        self.log_init = math.log(init_std)
        self.mean_scale = float(mean_scale)
        self.hidden = nn.Sequential(
            nn.LayerNorm(embedding_dim), nn.Linear(embedding_dim, hidden_dim), nn.GELU()
        )
        self.mean_head = nn.Linear(hidden_dim, embedding_dim)
        self.std_head = nn.Linear(hidden_dim, embedding_dim)
        for head in (self.mean_head, self.std_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.mean_head.requires_grad_(mean_scale > 0)
        self.log_std_offset = nn.Parameter(torch.zeros(vocab_size), requires_grad=vocab_size > 0)

    @torch.no_grad()
    def warm_start(self, token_ids: torch.Tensor, std: float) -> None:
        """Start ``token_ids`` at ``sigma = std`` (e.g. the frequency rule's frequent tokens).

        The exact known-prior MI is flat while a token's noise is small against its distance to
        the other tokens (every token is then identified whatever its std), so gradient descent
        from a small uniform std never finds the tokens worth hiding; this sets the per-token
        offset of ``log sigma`` so that training starts from such an allocation.
        """
        if self.log_std_offset.numel() == 0:
            raise ValueError("warm_start needs a layer built with vocab_size > 0")
        self.log_std_offset[token_ids] = math.log(std) - self.log_init

    def vocabulary_parameters(
        self, table: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden(table if rows is None else table[rows])
        means = self.mean_scale * torch.tanh(self.mean_head(hidden))
        log_stds = self.log_init + self.std_head(hidden)
        if self.log_std_offset.numel():
            offset = self.log_std_offset if rows is None else self.log_std_offset[rows]
            log_stds = log_stds + offset.unsqueeze(-1)
        return means, torch.exp(torch.clamp(log_stds, self.log_min, self.log_max))
