"""A learned discrete channel: each token is replaced by one of its ``K`` nearest candidates.

The mechanism of SanText (:mod:`mi_losses.mechanisms.metric_dp`) releases a token $y$ of an
output vocabulary drawn from $p(y \\mid x) \\propto \\exp(-\\varepsilon d_{xy} / 2)$: one
parameter for every token. :class:`LearnedSubstitution` learns the distribution instead, over a
CusText-style candidate set (the ``K`` output rows nearest to $W_x$, so no ``V x V_out`` table is
held):

$$p(\\text{candidates}[x, k] \\mid x) = \\operatorname{softmax}_k(\\text{logits}[x])$$

with ``logits`` a learned ``(V, K)`` parameter, initialised to SanText's logits restricted to the
candidates. Its known-prior MI is exact and differentiable
(:func:`~mi_losses.mechanisms.channel_mutual_information` with sparse outputs); a release is a
draw (:meth:`LearnedSubstitution.sample`) or, for training through a frozen model, a
straight-through Gumbel-softmax one-hot over the candidates (:meth:`~LearnedSubstitution.relaxed`:
the forward pass is a true draw, the gradient that of the tempered softmax).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mi_losses.mechanisms.metric_dp import channel_mutual_information

__all__ = ["LearnedSubstitution", "nearest_candidates"]

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


class LearnedSubstitution(nn.Module):
    """A per-token substitution distribution over each token's ``K`` nearest output rows.

    Args:
        table: the input vocabulary's embedding table ``(V, E)``.
        output_table: the output vocabulary's rows ``(V_out, E)`` (a released token is one of
            them).
        num_candidates: ``K``, candidates per input token.
        epsilon: SanText's parameter of the initial logits, $-\\varepsilon d_{xy} / 2$.

    Attributes:
        logits: the learned ``(V, K)`` parameter.
        candidates: ``(V, K)`` int64 buffer, indices into the output vocabulary, nearest first.

    Example:
        >>> layer = LearnedSubstitution(torch.eye(4), torch.eye(4), num_candidates=2)
        >>> layer.log_probabilities().shape
        torch.Size([4, 2])
    """

    candidates: torch.Tensor

    def __init__(
        self,
        table: torch.Tensor,
        output_table: torch.Tensor,
        num_candidates: int = 32,
        epsilon: float = 12.5,
    ) -> None:
        super().__init__()
        if not (isinstance(epsilon, int | float) and epsilon >= 0 and math.isfinite(epsilon)):
            raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        candidates, distances = nearest_candidates(table, output_table, num_candidates)
        self.num_outputs = int(output_table.shape[0])
        self.register_buffer("candidates", candidates)
        self.logits = nn.Parameter((-0.5 * epsilon * distances).float())

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
        flat = token_ids.reshape(-1)
        probabilities = self.log_probabilities()[flat].double().exp()
        picks = torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)
        return self.candidates[flat, picks].reshape(token_ids.shape)

    def relaxed(
        self, token_ids: torch.Tensor, temperature: float = 0.5, *, hard: bool = True
    ) -> torch.Tensor:
        """Gumbel-softmax weights over each token's candidates, ``(*token_ids.shape, K)``.

        ``hard=True``: straight-through, the forward value is the one-hot of a draw from the
        channel (the argmax of logits plus Gumbel noise), the gradient that of the softmax at
        ``temperature``. Draws from the global random generator.
        """
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        return F.gumbel_softmax(self.logits[token_ids], tau=temperature, hard=hard)

    def forward(
        self,
        token_ids: torch.Tensor,
        output_table: torch.Tensor,
        temperature: float = 0.5,
        *,
        hard: bool = True,
    ) -> torch.Tensor:
        """The released rows of ``output_table`` ``(V_out, E)`` under :meth:`relaxed` weights,
        ``(*token_ids.shape, E)``: a draw from the channel, differentiable in :attr:`logits`."""
        if output_table.ndim != 2 or output_table.shape[0] != self.num_outputs:
            raise ValueError(
                f"output_table must have shape ({self.num_outputs}, E), "
                f"got {tuple(output_table.shape)}"
            )
        weights = self.relaxed(token_ids, temperature, hard=hard)
        rows = output_table[self.candidates[token_ids]]
        return torch.einsum("...k,...ke->...e", weights.to(rows.dtype), rows)

    @torch.no_grad()
    def dense_log_probabilities(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """$\\log p(y \\mid x)$ ``(R, V_out)`` for the inputs ``rows`` (``None``: all ``V``), with
        :data:`FLOOR_LOG_PROBABILITY` off the candidates."""
        rows = torch.arange(self.logits.shape[0]) if rows is None else rows
        dense = torch.full((rows.shape[0], self.num_outputs), FLOOR_LOG_PROBABILITY)
        return dense.scatter_(1, self.candidates[rows], self.log_probabilities()[rows].float())
