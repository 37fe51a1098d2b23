"""Module form of the cross-batch Gaussian mixture entropy."""

from __future__ import annotations

import torch

from mi_losses.functional import gaussian_mixture_entropy_estimate
from mi_losses.losses.base import MixtureLossModule


class GaussianMixtureEntropy(MixtureLossModule):
    """Monte Carlo upper bound (in expectation) on the entropy of the noisy embeddings.

    Module form of :func:`mi_losses.functional.gaussian_mixture_entropy_estimate`: queries are
    `noisy_input_embeddings` `(M, S, E)` on the positions of `noise_mask`; the components
    $\\mathcal N(x_j + \\mu_j, \\sigma_j)$ come from `means_tensor`, `stds_tensor` and
    `clean_input_embeddings` `(N, S, E)` of another batch (all their positions, or those of the
    keyword `component_mask`). Options: :class:`~mi_losses.losses.base.MixtureLossModule`.

    The arguments come in the library's order ([the glossary](glossary.md)), not in the order
    of :func:`mi_losses.functional.gaussian_mixture_entropy`, which keeps the reference's:
    `GaussianMixtureEntropy()(mu, sigma, mask, x, y)` equals
    `gaussian_mixture_entropy(x, y, mu, sigma, mask)`.

    Example:
        >>> loss = GaussianMixtureEntropy(units="bits")
        >>> x, mu, sigma = torch.randn(4, 3, 2), torch.zeros(4, 3, 2), torch.ones(4, 3, 2)
        >>> value = loss(mu, sigma, None, x, x + torch.randn(4, 3, 2))
        >>> sorted(loss.component_losses)[0]
        'gaussian_mixture_log_constants_and_determinant_loss'
    """

    def forward(
        self,
        means_tensor: torch.Tensor,
        stds_tensor: torch.Tensor,
        noise_mask: torch.Tensor | None,
        clean_input_embeddings: torch.Tensor,
        noisy_input_embeddings: torch.Tensor,
        *,
        component_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Entropy estimate; `component_mask` `(N, S)` restricts the components' positions."""
        estimate = gaussian_mixture_entropy_estimate(
            means_tensor,
            stds_tensor,
            noise_mask,
            clean_input_embeddings,
            noisy_input_embeddings,
            component_mask=component_mask,
            granularity=self.granularity,
            kernel=self.kernel_options,
            gather=self.gather_options,
        )
        return self._output(estimate)
