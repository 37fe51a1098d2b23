"""The reference LightningModule: learn Gaussian obfuscation that trades privacy for utility."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from mi_losses.apps.demo.downstream import FrozenDownstreamEncoder
from mi_losses.functional import gaussian_entropy_log_loss
from mi_losses.losses import MutualInformationLoss, SubBatchMutualInformation
from mi_losses.noise import GaussianNoiseLayer


class ObfuscationTask(pl.LightningModule):
    """Train a noise layer ``y = x + mu(x) + sigma(x) * eps`` against a privacy/utility trade-off.

    The loss of a batch of clean token embeddings ``x`` ``(B, S, E)`` with noise mask ``(B, S)``
    is::

        loss = alpha * mi_loss(mu, sigma, mask, x, y) + (1 - alpha) * utility_loss

        utility_loss = sum_active |f(y) - f(x)|^2 / sum_active |f(x) - mean f(x)|^2

    where ``f`` is a frozen random transformer encoder (the downstream model the noisy
    embeddings must stay useful to): ``0`` means the downstream outputs are unchanged, ``1``
    that they are as far off as a constant output would be.

    Logged per epoch, and per step in training (``{stage}`` is ``train``, ``val`` or ``test``):
    ``{stage}/loss``,
    ``{stage}/privacy_loss`` (the ``mi_loss`` value), ``{stage}/utility_loss``,
    ``{stage}/std/mean|min|max`` (over noised positions) and
    ``{stage}/gaussian_entropy_log_loss``. The component losses of ``mi_loss`` are logged by
    :class:`mi_losses.callbacks.ComponentLossLogger`, which finds the module at ``mi_loss``.

    Args:
        mi_loss: the privacy loss, a :class:`mi_losses.MutualInformationLoss` (its ``forward``
            takes ``(means_tensor, stds_tensor, noise_mask, clean_input_embeddings,
            noisy_input_embeddings)``); default ``SubBatchMutualInformation()``. Swap it or
            its options in YAML with ``class_path``/``init_args``.
        alpha: weight of the privacy loss, in ``[0, 1]``. An MI estimate over whole sequences
            is hundreds of nats while the utility loss is of order 1, hence the small default.
        embedding_dim: ``E`` (linked to ``data.embedding_dim`` by the CLI).
        noise_hidden_dim: width of the noise layer's MLP.
        min_std: lower bound of ``sigma``.
        max_std: upper bound of ``sigma``.
        init_std: ``sigma`` at initialisation.
        downstream_hidden_dim: feed-forward width of the frozen downstream encoder.
        downstream_heads: attention heads of the frozen downstream encoder.
        downstream_seed: seed of the frozen downstream encoder's weights.
        learning_rate: Adam learning rate of the noise layer.
        gather: evaluate each rank's queries against the components of all ranks
            (the ``gather`` option of the loss module). ``None`` (default): on when
            the trainer runs more than one process (``trainer.world_size > 1``), otherwise the
            loss module's own setting; ``true``/``false`` set the loss module's option.
    """

    def __init__(
        self,
        mi_loss: MutualInformationLoss | None = None,
        alpha: float = 0.002,
        embedding_dim: int = 16,
        noise_hidden_dim: int = 64,
        min_std: float = 1e-3,
        max_std: float = 2.0,
        init_std: float = 0.05,
        downstream_hidden_dim: int = 64,
        downstream_heads: int = 2,
        downstream_seed: int = 0,
        learning_rate: float = 3e-3,
        gather: bool | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ObfuscationTask: alpha must lie in [0, 1], got {alpha}")
        if learning_rate <= 0:
            raise ValueError(f"ObfuscationTask: learning_rate must be > 0, got {learning_rate}")
        mi_loss = SubBatchMutualInformation() if mi_loss is None else mi_loss
        if not isinstance(mi_loss, MutualInformationLoss):
            raise TypeError(
                "ObfuscationTask: mi_loss must be a MutualInformationLoss (e.g. "
                f"SubBatchMutualInformation), got {type(mi_loss).__name__}"
            )
        if gather is not None and not isinstance(gather, bool):
            raise ValueError(f"ObfuscationTask: gather must be true, false or null, got {gather!r}")
        self.save_hyperparameters(ignore=["mi_loss"])
        self.gather = gather
        self.mi_loss = mi_loss
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.noise = GaussianNoiseLayer(
            embedding_dim,
            hidden_dim=noise_hidden_dim,
            min_std=min_std,
            max_std=max_std,
            init_std=init_std,
        )
        self.downstream = FrozenDownstreamEncoder(
            embedding_dim,
            hidden_dim=downstream_hidden_dim,
            num_heads=downstream_heads,
            seed=downstream_seed,
        )

    def setup(self, stage: str) -> None:
        """Turn component gathering on under a multi-process strategy (see ``gather``)."""
        has_option = hasattr(self.mi_loss, "gather")  # a custom loss may lack it
        if self.gather is None:
            if self.trainer.world_size > 1 and has_option:
                setattr(self.mi_loss, "gather", True)  # noqa: B010
            return
        if not has_option:
            raise ValueError(
                f"ObfuscationTask: gather={self.gather} needs a loss module with a gather "
                f"option; {type(self.mi_loss).__name__} has none"
            )
        setattr(self.mi_loss, "gather", self.gather)  # noqa: B010

    def utility_loss(
        self, clean: torch.Tensor, noisy: torch.Tensor, token_mask: torch.Tensor
    ) -> torch.Tensor:
        """Normalised squared error of the downstream outputs on the real tokens (see above)."""
        with torch.no_grad():
            target = self.downstream(clean, token_mask)[token_mask]
        output = self.downstream(noisy, token_mask)[token_mask]
        spread = (target - target.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
        return (output - target).pow(2).sum() / spread

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        clean, noise_mask = batch["embeddings"], batch["noise_mask"].bool()
        noisy, means, stds = self.noise(clean, noise_mask)
        privacy = self.mi_loss(
            means_tensor=means,
            stds_tensor=stds,
            noise_mask=noise_mask,
            clean_input_embeddings=clean,
            noisy_input_embeddings=noisy,
        )
        # The synthetic data noises exactly the real tokens: the noise mask is the token mask.
        utility = self.utility_loss(clean, noisy, noise_mask)
        loss = self.alpha * privacy + (1.0 - self.alpha) * utility

        active_stds = stds.detach()[noise_mask]
        batch_size = clean.shape[0]
        values = {
            "loss": loss.detach(),
            "privacy_loss": privacy.detach(),
            "utility_loss": utility.detach(),
            "std/mean": active_stds.mean(),
            "std/min": active_stds.min(),
            "std/max": active_stds.max(),
            "gaussian_entropy_log_loss": gaussian_entropy_log_loss(stds.detach(), noise_mask),
        }
        on_step = stage == "train"
        for name, value in values.items():
            self.log(
                f"{stage}/{name}",
                value,
                on_step=on_step,
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=True,  # the same global value on every rank (a no-op on one)
                prog_bar=name == "utility_loss",
                reduce_fx="min" if name == "std/min" else "max" if name == "std/max" else "mean",
            )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(parameters, lr=self.learning_rate)
