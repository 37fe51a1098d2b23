"""Every layer of the study as the attackers see it: a *channel* from token ids to releases.

A channel is called with ``input_ids`` and ``noise_mask`` ``(B, S)`` and draws, from the global
random generator, a :class:`Draw`: the embeddings the frozen encoder (and every attacker) reads,
``(B, S, E)``, clean where nothing is noised; the one-token Bayes log posterior over the
candidates (the tokens seen in training) where the layer is context-free; the released output
index where the layer releases tokens. Called as a
:data:`~mi_losses.attacks.inversion.Channel`, it returns the attacker's part only.

- :class:`GaussianTokenChannel`: a context-free Gaussian layer of the MiniLM study (isotropic,
  frequency rule, learned on the exact MI).
- :class:`ReleaseChannel`: a metric-DP mechanism (``"santext"`` or ``"laplace_dp"``) releasing a
  token of the *output vocabulary* = the candidates (the training text's tokens).
- :class:`SequenceChannel`: a sequence-dependent Gaussian layer
  (``forward(embeddings (B, S, E), noise_mask) -> NoisyEmbeddings``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from mi_losses.attacks.inversion import AttackInputs
from mi_losses.attacks.posterior import gaussian_token_log_posterior
from mi_losses.functional import bayes_token_attack, vocabulary_mutual_information_estimate
from mi_losses.mechanisms import (
    laplace_channel_log_probabilities,
    laplace_release,
    release_log_posterior,
    santext_log_probabilities,
    santext_release,
)
from mi_losses.noise import TokenNoise


class Draw(NamedTuple):
    """One draw of a channel on one batch (see the module docstring)."""

    embeddings: torch.Tensor
    log_posterior: torch.Tensor | None
    released: torch.Tensor | None


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` rows placed at the ``N`` true positions of ``mask`` ``(B, S)``; zeros elsewhere."""
    out = values.new_zeros(*mask.shape, values.shape[-1])
    out[mask] = values
    return out


def _released(draws: list[Draw], batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The released output indices at the noised positions of every batch, ``(N,)``."""
    found = []
    for draw, batch in zip(draws, batches, strict=True):
        assert draw.released is not None
        found.append(draw.released[batch["noise_mask"]])
    return torch.cat(found)


class StudyChannel:
    """Base class: ``draw`` is the layer; the attackers that apply are methods."""

    context_free = False

    def __init__(self, table: torch.Tensor, prior: torch.Tensor, candidates: torch.Tensor) -> None:
        self.table = table
        self.prior = prior
        self.candidates = candidates

    def draw(self, input_ids: torch.Tensor, noise_mask: torch.Tensor) -> Draw:
        raise NotImplementedError

    def __call__(self, input_ids: torch.Tensor, noise_mask: torch.Tensor) -> AttackInputs:
        draw = self.draw(input_ids, noise_mask.bool())
        return AttackInputs(draw.embeddings, draw.log_posterior)

    def bayes_guesses(
        self, draws: list[Draw], batches: list[dict[str, torch.Tensor]], top_k: int = 5
    ) -> torch.Tensor | None:
        """The one-token Bayes attacker's ``top_k`` vocabulary ids ``(N, top_k)``, or ``None``."""
        return None

    def exact_mutual_information(
        self, draws: list[Draw], batches: list[dict[str, torch.Tensor]]
    ) -> float | None:
        """Known-prior MI in nats per noised token on these draws, or ``None`` where undefined."""
        return None

    def describe(self) -> dict[str, Any]:
        """Extra facts about the layer for the frontier JSON."""
        return {}


class GaussianTokenChannel(StudyChannel):
    """A context-free Gaussian layer (:class:`~mi_losses.noise.TokenNoise`).

    Bayes attacker and exact MI over the whole vocabulary with the smoothed training prior, as
    in the MiniLM study; the attacker's posterior feature over the candidates.
    """

    context_free = True

    def __init__(
        self,
        layer: TokenNoise,
        table: torch.Tensor,
        prior: torch.Tensor,
        candidates: torch.Tensor,
    ) -> None:
        super().__init__(table, prior, candidates)
        self.layer = layer.eval()
        with torch.no_grad():
            self.means, self.stds = (t.detach() for t in layer.vocabulary_parameters(table))
        self.candidate_log_prior = prior[candidates].double().log()

    @torch.no_grad()
    def draw(self, input_ids: torch.Tensor, noise_mask: torch.Tensor) -> Draw:
        out = self.layer(input_ids, self.table, noise_mask)
        rows = self.candidates
        posterior = gaussian_token_log_posterior(
            out.noisy[noise_mask],
            self.table[rows],
            self.candidate_log_prior,
            self.means[rows],
            self.stds[rows],
        )
        return Draw(out.noisy.detach(), _scatter(posterior, noise_mask), None)

    def bayes_guesses(
        self, draws: list[Draw], batches: list[dict[str, torch.Tensor]], top_k: int = 5
    ) -> torch.Tensor:
        noisy = torch.cat(
            [d.embeddings[b["noise_mask"]] for d, b in zip(draws, batches, strict=True)]
        )
        return bayes_token_attack(
            self.means, self.stds, None, noisy.unsqueeze(0), self.table, self.prior, top_k=top_k
        )[0]

    def exact_mutual_information(
        self, draws: list[Draw], batches: list[dict[str, torch.Tensor]]
    ) -> float:
        noisy = torch.cat(
            [d.embeddings[b["noise_mask"]] for d, b in zip(draws, batches, strict=True)]
        )
        ids = torch.cat([b["input_ids"][b["noise_mask"]] for b in batches])
        estimate = vocabulary_mutual_information_estimate(
            self.means,
            self.stds,
            None,
            ids.unsqueeze(0),
            noisy.unsqueeze(0),
            self.table,
            self.prior,
        )
        return float(estimate.value)

    def describe(self) -> dict[str, Any]:
        return {"noise_std_mean_over_candidates": float(self.stds[self.candidates].mean())}


class ReleaseChannel(StudyChannel):
    """A metric-DP mechanism releasing a candidate token (output vocabulary = the candidates).

    ``"santext"``: the channel is exact. Its Bayes attacker and the exact MI use every vocabulary
    token as an input, with the smoothed training prior (as the Gaussian layers').
    ``"substitution"``: a given exact channel ``log_channel`` ``(V, C)`` (a learned
    :class:`~mi_losses.mechanisms.LearnedSubstitution`), judged as SanText's.
    ``"laplace_dp"``: the channel is estimated by Monte Carlo for the candidates as inputs
    (:func:`~mi_losses.mechanisms.laplace_channel_log_probabilities`, ``num_samples`` draws per
    candidate); its Bayes attacker guesses among the candidates, and no exact MI is reported.

    Args:
        mechanism: ``"santext"``, ``"laplace_dp"`` or ``"substitution"``.
        epsilon: the mechanism's parameter (``"substitution"``: its initial SanText epsilon).
        num_samples: Monte Carlo draws per candidate (``"laplace_dp"`` only).
        seed: seed of the Monte Carlo estimate.
        log_channel: ``"substitution"`` only: its $\\log p(y \\mid x)$ ``(V, C)``.
    """

    context_free = True

    def __init__(
        self,
        mechanism: str,
        epsilon: float,
        table: torch.Tensor,
        prior: torch.Tensor,
        candidates: torch.Tensor,
        *,
        num_samples: int = 128,
        seed: int = 0,
        log_channel: torch.Tensor | None = None,
    ) -> None:
        super().__init__(table, prior, candidates)
        if mechanism not in ("santext", "laplace_dp", "substitution"):
            raise ValueError(
                f"mechanism must be 'santext', 'laplace_dp' or 'substitution', got {mechanism!r}"
            )
        if (mechanism == "substitution") != (log_channel is not None):
            raise ValueError("log_channel must be given for mechanism 'substitution' only")
        self.mechanism = mechanism
        self.epsilon = float(epsilon)
        self.num_samples = num_samples
        self.output_table = table[candidates]
        self.candidate_log_prior = prior[candidates].double().log().float()
        self.seed = seed
        self.with_posterior = True
        if mechanism == "santext":
            # (V, C): every vocabulary token as an input, the candidates as outputs.
            self.log_channel = santext_log_probabilities(table, self.output_table, self.epsilon)
        if log_channel is not None:
            self.log_channel = log_channel
        self._candidate_log_channel: torch.Tensor | None = None

    @property
    def candidate_log_channel(self) -> torch.Tensor:
        """``log p(y | x)`` with the candidates as inputs and outputs ``(C, C)`` (computed once)."""
        if self._candidate_log_channel is None:
            if self.mechanism != "laplace_dp":
                self._candidate_log_channel = self.log_channel[self.candidates]
            else:
                self._candidate_log_channel = laplace_channel_log_probabilities(
                    self.output_table,
                    self.epsilon,
                    num_samples=self.num_samples,
                    generator=torch.Generator().manual_seed(self.seed),
                )
        return self._candidate_log_channel

    @torch.no_grad()
    def draw(self, input_ids: torch.Tensor, noise_mask: torch.Tensor) -> Draw:
        tokens = input_ids[noise_mask]
        if self.mechanism != "laplace_dp":
            released = santext_release(tokens, self.log_channel)
        else:
            released = laplace_release(tokens, self.table, self.epsilon, self.output_table)
        embeddings = self.table[input_ids].clone()
        embeddings[noise_mask] = self.output_table[released]
        released_map = torch.full_like(input_ids, -1)
        released_map[noise_mask] = released
        if not self.with_posterior:
            return Draw(embeddings, None, released_map)
        posterior = release_log_posterior(
            released, self.candidate_log_channel, self.candidate_log_prior
        )
        return Draw(embeddings, _scatter(posterior, noise_mask), released_map)

    def bayes_guesses(
        self, draws: list[Draw], batches: list[dict[str, torch.Tensor]], top_k: int = 5
    ) -> torch.Tensor:
        released = _released(draws, batches)
        if self.mechanism != "laplace_dp":
            log_prior = self.prior.log()
            return torch.cat(
                [
                    release_log_posterior(chunk, self.log_channel, log_prior)
                    .topk(top_k, dim=-1)
                    .indices
                    for chunk in torch.split(released, 256)
                ]
            )
        posterior = release_log_posterior(
            released, self.candidate_log_channel, self.candidate_log_prior
        )
        return self.candidates[posterior.topk(top_k, dim=-1).indices]

    def exact_mutual_information(
        self, draws: list[Draw], batches: list[dict[str, torch.Tensor]]
    ) -> float | None:
        if self.mechanism == "laplace_dp":
            return None
        released = _released(draws, batches)
        ids = torch.cat([b["input_ids"][b["noise_mask"]] for b in batches])
        log_prior = (self.prior.double() / self.prior.double().sum()).log()
        own = self.log_channel[ids, released].double()
        marginal = torch.cat(
            [
                torch.logsumexp(self.log_channel.T[chunk].double() + log_prior, dim=-1)
                for chunk in torch.split(released, 256)
            ]
        )
        return float((own - marginal).mean())

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"output_vocabulary": "training-text tokens (candidates)"}
        if self.mechanism == "laplace_dp":
            facts["channel_estimate"] = f"Monte Carlo, {self.num_samples} draws per candidate"
        return facts


class SequenceChannel(StudyChannel):
    """A sequence-dependent Gaussian layer: each position's mean and std read the whole sequence.

    No one-token Bayes attacker and no exact MI (the channel of a token depends on its context).
    """

    def __init__(
        self,
        layer: torch.nn.Module,
        table: torch.Tensor,
        prior: torch.Tensor,
        candidates: torch.Tensor,
    ) -> None:
        super().__init__(table, prior, candidates)
        self.layer = layer.eval()

    @torch.no_grad()
    def draw(self, input_ids: torch.Tensor, noise_mask: torch.Tensor) -> Draw:
        clean = self.table[input_ids]
        out = self.layer(clean, noise_mask)
        noisy = torch.where(noise_mask.unsqueeze(-1), out.noisy, clean)
        return Draw(noisy.detach(), None, None)
