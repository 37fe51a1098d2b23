"""A learned discrete channel: each token is replaced by one of its ``K`` nearest candidates.

The mechanism of SanText (:mod:`mi_losses.mechanisms.metric_dp`) releases a token $y$ of an
output vocabulary drawn from $p(y \\mid x) \\propto \\exp(-\\varepsilon d_{xy} / 2)$: one
parameter for every token. :class:`LearnedSubstitution` learns the distribution instead, over a
CusText-style candidate set (the ``K`` output rows nearest to $W_x$, so no ``V x V_out`` table is
held):

$$p(\\text{candidates}[x, k] \\mid x) = \\operatorname{softmax}_k(\\text{logits}[x])$$

with ``logits`` a learned ``(V, K)`` parameter, initialised to SanText's logits restricted to the
candidates (:meth:`LearnedSubstitution.nearest`, or :meth:`~LearnedSubstitution.initialise` on a
layer built from plain data). Its known-prior MI is exact and differentiable
(:func:`~mi_losses.mechanisms.channel_mutual_information` with sparse outputs;
:class:`~mi_losses.losses.SubstitutionMutualInformation` is it as a loss module); a release is a draw
(:meth:`LearnedSubstitution.sample`) or, for training through a frozen model, a straight-through
Gumbel-softmax one-hot over the candidates (:meth:`~LearnedSubstitution.relaxed`,
:meth:`~LearnedSubstitution.release`: the forward pass is a true draw, the gradient that of the
tempered softmax). A trained layer is a directory (:class:`~mi_losses.noise.PretrainedMixin`:
``config.json`` with the plain constructor arguments, ``model.safetensors`` with the logits and
the candidate table).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from mi_losses._validation import as_bool_mask, check_number, check_positive_int
from mi_losses.mechanisms.metric_dp import channel_mutual_information
from mi_losses.noise.pretrained import PretrainedMixin

__all__ = ["LearnedSubstitution", "Release", "nearest_candidates"]

FLOOR_LOG_PROBABILITY = -1.0e4
"""The log probability :meth:`LearnedSubstitution.dense_log_probabilities` writes off the
candidates: ``exp(-1e4)`` is 0 in float64, and a finite floor keeps every log posterior finite."""


def nearest_candidates(
    table: torch.Tensor, output_table: torch.Tensor, num_candidates: int, *, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``num_candidates`` rows of ``output_table`` nearest (L2) to every row of ``table``.

    Args:
        table: input rows ``(V, E)``.
        output_table: output rows ``(V_out, E)``.
        num_candidates: ``K``, in ``[1, V_out]``.
        chunk_size: input rows compared at once.

    Returns:
        ``(indices, distances)``, both ``(V, K)``, nearest first: int64 indices into
        ``output_table`` and float64 distances.

    Example:
        >>> indices, distances = nearest_candidates(torch.eye(3), torch.eye(3), 2)
        >>> indices[:, 0].tolist()
        [0, 1, 2]
    """
    if table.ndim != 2 or output_table.ndim != 2 or table.shape[1] != output_table.shape[1]:
        raise ValueError(
            "table must have shape (V, E) and output_table (V_out, E) with the same E, got "
            f"{tuple(table.shape)} and {tuple(output_table.shape)}"
        )
    if not 1 <= num_candidates <= output_table.shape[0]:
        raise ValueError(
            f"num_candidates must lie in [1, {output_table.shape[0]}] (the output rows), "
            f"got {num_candidates}"
        )
    outputs = output_table.detach().double()
    found = [
        torch.cdist(chunk.detach().double(), outputs).topk(num_candidates, largest=False)
        for chunk in torch.split(table, chunk_size)
    ]
    return torch.cat([f.indices for f in found]), torch.cat([f.values for f in found])


class Release(NamedTuple):
    """What :meth:`LearnedSubstitution.release` returns.

    Attributes:
        noisy: ``(B, S, E)``, the released token's output row where the noise mask is true (a
            straight-through draw, differentiable in the logits), the clean row elsewhere.
        released: ``(B, S)`` int64, the released output index where the noise mask is true,
            ``-1`` elsewhere.
    """

    noisy: torch.Tensor
    released: torch.Tensor


class LearnedSubstitution(PretrainedMixin):
    """A per-token substitution distribution over each token's ``K`` nearest output rows.

    Built from plain data (so YAML can configure it and ``config.json`` holds it), with the
    candidates unset; :meth:`initialise` sets them and the logits from the embedding tables, and
    :meth:`nearest` does both. Saved and loaded as a directory (``save_pretrained``,
    ``from_pretrained``): the candidate table travels in ``model.safetensors`` with the logits.

    Args:
        embedding_dim: ``E``, the width of the rows it releases.
        vocab_size: ``V``, input tokens.
        num_candidates: ``K``, candidates per input token.
        epsilon: SanText's parameter of the initial logits, $-\\varepsilon d_{xy} / 2$.
        temperature: the Gumbel-softmax temperature of :meth:`relaxed` (the gradient only: the
            forward value is a draw whatever it is).
        num_outputs: ``V_out``, the output vocabulary's size (``None``: ``vocab_size``, the
            released token is a vocabulary token).

    Attributes:
        logits: the learned ``(V, K)`` parameter.
        candidates: ``(V, K)`` int64 buffer, indices into the output vocabulary, nearest first
            (``-1`` until :meth:`initialise`).

    Example:
        >>> layer = LearnedSubstitution.nearest(torch.eye(4), torch.eye(4), num_candidates=2)
        >>> layer.log_probabilities().shape
        torch.Size([4, 2])
    """

    candidates: torch.Tensor

    def __init__(
        self,
        embedding_dim: int,
        vocab_size: int,
        num_candidates: int = 32,
        epsilon: float = 12.5,
        temperature: float = 0.5,
        num_outputs: int | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        for name, value in (
            ("embedding_dim", embedding_dim),
            ("vocab_size", vocab_size),
            ("num_candidates", num_candidates),
        ):
            check_positive_int(owner, name, value)
        check_positive_int(owner, "num_outputs", num_outputs, optional=True)
        self.embedding_dim = embedding_dim
        self.vocab_size = vocab_size
        self.num_outputs = vocab_size if num_outputs is None else num_outputs
        if num_candidates > self.num_outputs:
            raise ValueError(
                f"{owner}: num_candidates must lie in [1, {self.num_outputs}] (the output rows), "
                f"got {num_candidates}"
            )
        self.num_candidates = num_candidates
        self.epsilon = check_number(owner, "epsilon", epsilon, positive=False)
        self.temperature = check_number(owner, "temperature", temperature, positive=True)
        self.register_buffer("candidates", torch.full((vocab_size, num_candidates), -1))
        self.logits = nn.Parameter(torch.zeros(vocab_size, num_candidates))

    @classmethod
    def nearest(
        cls,
        table: torch.Tensor,
        output_table: torch.Tensor,
        num_candidates: int = 32,
        epsilon: float = 12.5,
        *,
        temperature: float = 0.5,
        allowed: torch.Tensor | None = None,
    ) -> LearnedSubstitution:
        """A layer over ``table`` ``(V, E)`` releasing rows of ``output_table`` ``(V_out, E)``,
        initialised (:meth:`initialise`)."""
        if table.ndim != 2 or output_table.ndim != 2:
            raise ValueError(
                "table must have shape (V, E) and output_table (V_out, E), got "
                f"{tuple(table.shape)} and {tuple(output_table.shape)}"
            )
        layer = cls(
            int(table.shape[1]),
            int(table.shape[0]),
            num_candidates,
            epsilon,
            temperature,
            num_outputs=int(output_table.shape[0]),
        )
        layer.initialise(table, output_table, allowed=allowed)
        return layer

    @torch.no_grad()
    def initialise(
        self,
        table: torch.Tensor,
        output_table: torch.Tensor,
        *,
        allowed: torch.Tensor | None = None,
    ) -> None:
        """Set the candidates to the ``K`` output rows nearest (L2) to every input row and the
        logits to SanText's on them, $-\\varepsilon d_{xy} / 2$.

        Args:
            table: the input rows ``(V, E)``.
            output_table: the output rows ``(V_out, E)``.
            allowed: output indices ``(C,)`` the candidates are drawn from (``None``: all), e.g.
                the tokens of the training text when the output vocabulary is the vocabulary.
        """
        expected = ((self.vocab_size, self.embedding_dim), (self.num_outputs, self.embedding_dim))
        if (tuple(table.shape), tuple(output_table.shape)) != expected:
            raise ValueError(
                f"table must have shape {expected[0]} and output_table {expected[1]}, got "
                f"{tuple(table.shape)} and {tuple(output_table.shape)}"
            )
        rows = output_table
        if allowed is not None:
            if allowed.ndim != 1 or allowed.dtype != torch.int64 or allowed.numel() == 0:
                raise ValueError(f"allowed must be a non-empty (C,) int64 tensor, got {allowed!r}")
            rows = output_table[allowed]
        indices, distances = nearest_candidates(table, rows, self.num_candidates)
        if allowed is not None:
            indices = allowed.to(indices.device)[indices]
        self.candidates.copy_(indices)
        self.logits.copy_(-0.5 * self.epsilon * distances)

    @property
    def initialised(self) -> bool:
        """Whether :meth:`initialise` (or a load) has set the candidates."""
        return bool((self.candidates >= 0).all())

    def _check_initialised(self) -> None:
        if not self.initialised:
            raise RuntimeError(
                f"{type(self).__name__} has no candidates yet: call initialise(table, "
                "output_table) or build it with LearnedSubstitution.nearest(...)"
            )

    def _check_tokens(self, token_ids: torch.Tensor) -> None:
        if token_ids.dtype != torch.int64:
            raise ValueError(f"token_ids must be int64, got {token_ids.dtype}")
        if token_ids.numel() and not 0 <= int(token_ids.min()) <= int(token_ids.max()) < (
            self.vocab_size
        ):
            raise ValueError(
                f"token_ids must lie in [0, vocab_size={self.vocab_size}), got values in "
                f"[{int(token_ids.min())}, {int(token_ids.max())}]"
            )

    def log_probabilities(self) -> torch.Tensor:
        """$\\log p(\\text{candidates}[x, k] \\mid x)$, ``(V, K)``."""
        return self.logits.log_softmax(-1)

    def mutual_information(self, prior: torch.Tensor) -> torch.Tensor:
        """The exact known-prior MI in nats (float64, 0-dim, differentiable); ``prior`` ``(V,)``."""
        if prior.shape != self.logits.shape[:1]:
            raise ValueError(
                f"prior must have shape ({self.logits.shape[0]},) like the vocabulary, "
                f"got {tuple(prior.shape)}"
            )
        self._check_initialised()
        return channel_mutual_information(
            self.log_probabilities(),
            prior,
            outputs=self.candidates,
            num_outputs=self.num_outputs,
        )

    @torch.no_grad()
    def sample(
        self, token_ids: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Released output index for every token (a draw), of the shape of ``token_ids``."""
        self._check_initialised()
        self._check_tokens(token_ids)
        flat = token_ids.reshape(-1)
        probabilities = self.log_probabilities()[flat].double().exp()
        picks = torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)
        return self.candidates[flat, picks].reshape(token_ids.shape)

    def relaxed(
        self, token_ids: torch.Tensor, temperature: float | None = None, *, hard: bool = True
    ) -> torch.Tensor:
        """Gumbel-softmax weights over each token's candidates, ``(*token_ids.shape, K)``.

        ``hard=True``: straight-through, the forward value is the one-hot of a draw from the
        channel (the argmax of logits plus Gumbel noise), the gradient that of the softmax at
        ``temperature`` (``None``: the layer's). Draws from the global random generator.
        """
        temperature = self.temperature if temperature is None else temperature
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        return F.gumbel_softmax(self.logits[token_ids], tau=temperature, hard=hard)

    def _check_output_table(self, output_table: torch.Tensor) -> None:
        if output_table.ndim != 2 or output_table.shape[0] != self.num_outputs:
            raise ValueError(
                f"output_table must have shape ({self.num_outputs}, E), "
                f"got {tuple(output_table.shape)}"
            )

    def forward(
        self,
        token_ids: torch.Tensor,
        output_table: torch.Tensor,
        temperature: float | None = None,
        *,
        hard: bool = True,
    ) -> torch.Tensor:
        """The released rows of ``output_table`` ``(V_out, E)`` under :meth:`relaxed` weights,
        ``(*token_ids.shape, E)``: a draw from the channel, differentiable in :attr:`logits`."""
        self._check_output_table(output_table)
        self._check_initialised()
        weights = self.relaxed(token_ids, temperature, hard=hard)
        rows = output_table[self.candidates[token_ids]]
        return torch.einsum("...k,...ke->...e", weights.to(rows.dtype), rows)

    def release(
        self,
        token_ids: torch.Tensor,
        table: torch.Tensor,
        noise_mask: torch.Tensor | None = None,
        *,
        output_table: torch.Tensor | None = None,
    ) -> Release:
        """Release the tokens ``token_ids`` ``(B, S)`` where ``noise_mask`` ``(B, S)`` is true.

        A straight-through draw (:meth:`relaxed` at the layer's temperature): the forward value
        is a candidate's row of ``output_table`` (``None``: ``table``, the output vocabulary is
        the vocabulary), the gradient reaches :attr:`logits`; elsewhere the clean row of
        ``table`` ``(V, E)``. See :class:`Release`.
        """
        if table.ndim != 2 or tuple(table.shape) != (self.vocab_size, self.embedding_dim):
            raise ValueError(
                f"table must have shape ({self.vocab_size}, {self.embedding_dim}), "
                f"got {tuple(table.shape)}"
            )
        output_table = table if output_table is None else output_table
        self._check_output_table(output_table)
        self._check_initialised()
        self._check_tokens(token_ids)
        mask = as_bool_mask(
            "noise_mask", noise_mask, token_ids.shape, token_ids.device, validate_values=True
        )
        weights = self.relaxed(token_ids, hard=True)
        candidates = self.candidates[token_ids]
        rows = output_table[candidates]
        drawn = torch.einsum("...k,...ke->...e", weights.to(rows.dtype), rows)
        noisy = torch.where(mask.unsqueeze(-1), drawn, table[token_ids].to(drawn.dtype))
        picked = candidates.gather(-1, weights.detach().argmax(-1, keepdim=True)).squeeze(-1)
        return Release(noisy, torch.where(mask, picked, torch.full_like(picked, -1)))

    @torch.no_grad()
    def dense_log_probabilities(
        self, rows: torch.Tensor | None = None, *, outputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """$\\log p(y \\mid x)$ ``(R, C)`` for the inputs ``rows`` (``None``: all ``V``), with
        :data:`FLOOR_LOG_PROBABILITY` off the candidates.

        The columns are the output indices ``outputs`` ``(C,)`` in their order (``None``: all
        ``V_out``); every candidate of ``rows`` must be among them.
        """
        self._check_initialised()
        rows = torch.arange(self.vocab_size, device=self.logits.device) if rows is None else rows
        columns = self.candidates[rows]
        width = self.num_outputs
        if outputs is not None:
            position = torch.full((self.num_outputs,), -1, device=columns.device)
            position[outputs] = torch.arange(outputs.shape[0], device=columns.device)
            columns = position[columns]
            if bool((columns < 0).any()):
                missing = torch.unique(self.candidates[rows][columns < 0])
                raise ValueError(
                    f"outputs must hold every candidate of the rows; {missing.numel()} are not "
                    f"among them (e.g. {missing[:5].tolist()})"
                )
            width = int(outputs.shape[0])
        dense = torch.full((rows.shape[0], width), FLOOR_LOG_PROBABILITY, device=columns.device)
        return dense.scatter_(1, columns, self.log_probabilities()[rows].float())
