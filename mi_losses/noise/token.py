"""Context-free token noise layers: the mean and std of a token depend on that token only.

Every layer here maps the vocabulary table ``W (V, E)`` to a mean shift and a std for every row,
``(means, stds)`` each ``(V, E)``; a batch of token ids ``(B, S)`` is then noised as
``y = W[t] + means[t] + stds[t] * eps`` at the noise mask. Because the channel ``p(y | t)`` is
known for every token, the exact known-prior mutual information and the Bayes-optimal attack of
``mi_losses.functional`` apply to all of them (docs/math.md, "Known-prior mutual information").

- :class:`IsotropicNoise`: one std for every token and feature, no shift (baseline).
- :class:`FrequencyRuleNoise`: the ``k`` most frequent training tokens get ``large_std``, every
  other token ``small_std``, no shift (baseline).
- :class:`LearnedTokenNoise`: :class:`~mi_losses.noise.GaussianNoiseLayer`'s MLP and bounded
  head on the token's clean embedding, plus an optional learned per-token offset of ``log sigma``
  and an optional many-to-one mean (each token pulled towards the prototype of its cluster).
- :func:`as_token_noise`: a context-free embedding layer (``GaussianNoiseLayer``) seen as a
  token layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mi_losses.losses.prototypes import kmeans_prototypes, nearest_prototype
from mi_losses.noise._head import draw_noise, token_mlp
from mi_losses.noise.output import NoisyEmbeddings
from mi_losses.noise.pretrained import PretrainedMixin


class TokenNoise(PretrainedMixin):
    """Base class: subclasses implement :meth:`vocabulary_parameters`.

    Every token layer is saved and loaded as a directory (:meth:`save_pretrained`,
    :meth:`from_pretrained`, :class:`~mi_losses.noise.PretrainedMixin`).

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


class IsotropicNoise(TokenNoise):
    """``y = x + std * eps``: the same std for every token and feature, no shift.

    Args:
        std: the standard deviation, ``> 0``.
    """

    def __init__(self, std: float) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"IsotropicNoise: std must be positive, got {std}")
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
            raise ValueError(f"FrequencyRuleNoise: k must lie in [0, {counts.shape[0]}], got {k}")
        if not (large_std > 0 and small_std > 0):
            raise ValueError(
                f"FrequencyRuleNoise: large_std and small_std must be positive, got "
                f"{large_std} and {small_std}"
            )
        self.k = k
        token_stds = torch.full(counts.shape, float(small_std), device=counts.device)
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
    """:class:`~mi_losses.noise.GaussianNoiseLayer`'s MLP on the token's clean embedding.

    ``h = GELU(Linear(LayerNorm(x)))``, ``mu = mean_scale * tanh(Linear(h))`` and
    ``sigma = exp(clamp(log(init_std) + Linear(h) + offset[t], log(min_std), log(max_std)))``,
    both heads zero-initialised (``mu = 0``, ``sigma = init_std`` at the start). Why bounded and
    log-parametrised: docs/minilm.md, "Why the learned mean was bistable".

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
        num_prototypes: if ``> 0`` (needs ``vocab_size``), a many-to-one mean: every token ``v``
            is also pulled towards the prototype ``P_c(v)`` of its cluster,
            ``mu_v += g_v (P_c(v) - W_v)``, with a learned per-token gate
            ``g_v = clamp(gate_v, 0, 1)``; at ``g = 1`` every token of a cluster has the same
            centre, so one noisy token cannot name its cluster's member without context. The
            ``num_prototypes`` prototypes are k-means centroids of table rows and every token
            is assigned to the nearest (:meth:`fit_prototypes`, called before the first use).
        prototype_pull: the gates' initial value, in ``[0, 1]``.
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
        num_prototypes: int = 0,
        prototype_pull: float = 1.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.hidden, self.head = token_mlp(
            owner,
            embedding_dim,
            hidden_dim,
            min_std=min_std,
            max_std=max_std,
            init_std=init_std,
            mean_scale=mean_scale,
        )
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 0:
            raise ValueError(f"{owner}: vocab_size must be an int >= 0, got {vocab_size!r}")
        self.log_std_offset = nn.Parameter(torch.zeros(vocab_size), requires_grad=vocab_size > 0)
        if isinstance(num_prototypes, bool) or not isinstance(num_prototypes, int):
            raise ValueError(f"{owner}: num_prototypes must be an int >= 0, got {num_prototypes!r}")
        if num_prototypes < 0 or (num_prototypes > 0 and vocab_size == 0):
            raise ValueError(
                f"{owner}: num_prototypes must be >= 0 and needs vocab_size > 0, got "
                f"num_prototypes={num_prototypes}, vocab_size={vocab_size}"
            )
        if isinstance(prototype_pull, bool) or not 0.0 <= prototype_pull <= 1.0:
            raise ValueError(f"{owner}: prototype_pull must lie in [0, 1], got {prototype_pull!r}")
        # Registered only when asked, so that a layer without prototypes keeps its state dict.
        self.prototype_gate: nn.Parameter | None = None
        if num_prototypes:
            gate = torch.full((vocab_size,), float(prototype_pull))
            self.prototype_gate = nn.Parameter(gate)
            self.register_buffer("prototypes", torch.zeros(num_prototypes, embedding_dim))
            self.register_buffer("prototype_of", torch.full((vocab_size,), -1, dtype=torch.long))

    @torch.no_grad()
    def fit_prototypes(
        self,
        table: torch.Tensor,
        rows: torch.Tensor | None = None,
        *,
        iterations: int = 20,
        seed: int = 0,
    ) -> None:
        """Cluster ``table[rows]`` (all rows if ``None``) into the prototypes by k-means
        (:func:`~mi_losses.losses.kmeans_prototypes`) and assign every vocabulary token to its nearest prototype (L2)."""
        if self.prototype_gate is None:
            raise ValueError("LearnedTokenNoise.fit_prototypes needs num_prototypes > 0")
        prototypes: torch.Tensor = self.prototypes  # type: ignore[assignment]  # a buffer
        assigned: torch.Tensor = self.prototype_of  # type: ignore[assignment]  # a buffer
        if table.shape[0] != assigned.shape[0]:
            raise ValueError(
                f"LearnedTokenNoise.fit_prototypes: table must have {assigned.shape[0]} rows "
                f"(vocab_size), got {table.shape[0]}"
            )
        points = table if rows is None else table[rows]
        centroids = kmeans_prototypes(
            points, None, prototypes.shape[0], steps=iterations, seed=seed
        )
        prototypes.copy_(centroids)
        assigned.copy_(nearest_prototype(table, centroids))

    @torch.no_grad()
    def warm_start(self, token_ids: torch.Tensor, std: float) -> None:
        """Start ``token_ids`` at ``sigma = std`` (e.g. the frequency rule's frequent tokens).

        The exact known-prior MI is flat while a token's noise is small against its distance to
        the other tokens (every token is then identified whatever its std), so gradient descent
        from a small uniform std never finds the tokens worth hiding; this sets the per-token
        offset of ``log sigma`` so that training starts from such an allocation.
        """
        if self.log_std_offset.numel() == 0:
            raise ValueError("LearnedTokenNoise.warm_start needs a layer built with vocab_size > 0")
        self.log_std_offset[token_ids] = math.log(std) - self.head.log_init

    def vocabulary_parameters(
        self, table: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden(table if rows is None else table[rows])
        offset = None
        if self.log_std_offset.numel():
            offset = self.log_std_offset if rows is None else self.log_std_offset[rows]
            offset = offset.unsqueeze(-1)
        means, stds = self.head(hidden, offset)
        if self.prototype_gate is not None:
            means = means + self._prototype_pull(self.prototype_gate, table, rows)
        return means, stds

    def _prototype_pull(
        self, gate: torch.Tensor, table: torch.Tensor, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """``g_v (P_c(v) - W_v)`` of ``table[rows]``, ``(R, E)``."""
        assigned: torch.Tensor = self.prototype_of  # type: ignore[assignment]  # a buffer
        if bool((assigned < 0).any()):
            raise RuntimeError("LearnedTokenNoise: call fit_prototypes(table) before using it")
        prototypes: torch.Tensor = self.prototypes  # type: ignore[assignment]  # a buffer
        gate = gate.clamp(0.0, 1.0)
        if rows is not None:
            assigned, gate, table = assigned[rows], gate[rows], table[rows]
        return gate.unsqueeze(-1) * (prototypes[assigned].to(table.dtype) - table)


class _EmbeddingLayerAsTokenNoise(TokenNoise):
    """A context-free embedding layer (``vocabulary_parameters`` on table rows) as a token layer."""

    layer: Any

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def vocabulary_parameters(
        self, table: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer.vocabulary_parameters(table, rows)  # type: ignore[no-any-return]


def as_token_noise(layer: nn.Module) -> TokenNoise | None:
    """``layer`` as a :class:`TokenNoise` if it is context-free, else ``None``.

    A :class:`TokenNoise` comes back as is; a layer with ``context_free = True`` and
    ``vocabulary_parameters`` (:class:`~mi_losses.noise.GaussianNoiseLayer`) is wrapped, so
    the known-prior MI and the Bayes attack can judge it; a layer that reads context
    (:class:`~mi_losses.noise.SequenceGaussianNoiseLayer`) gives ``None``.
    """
    if isinstance(layer, TokenNoise):
        return layer
    if getattr(layer, "context_free", False) and hasattr(layer, "vocabulary_parameters"):
        return _EmbeddingLayerAsTokenNoise(layer)
    return None
