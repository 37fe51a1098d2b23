"""The losses inside your own LightningModule, without the CLI.

    python examples/own_lightning_module.py

A user's model: a noise layer in front of a small classifier, trained to classify sequences
from their noisy embeddings while the sub-batch MI estimate (a privacy loss) is minimised.
``ComponentLossLogger`` logs every component of the MI estimate per step under
``train/privacy/...`` through any logger (a CSVLogger here). Runs in a few seconds on a CPU.
"""

from __future__ import annotations

import csv
import importlib.util
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from mi_losses import ComponentLossLogger, GaussianNoiseLayer, SubBatchMutualInformation

PROGRESS = {"task": "train/task_loss", "mi_bits": "train/privacy/mutual_information_loss"}
"""What the progress bar shows: short label -> logged metric."""


def progress_bar() -> list[pl.Callback]:
    """The applications' rich bar (``Epoch 3/3``, short labels) where ``rich`` is installed."""
    if importlib.util.find_spec("rich") is None:
        return []  # Lightning's default tqdm bar
    from mi_losses.apps.progress import StepProgressBar

    return [StepProgressBar(metrics=PROGRESS)]


class PrivateClassifier(pl.LightningModule):
    """Classify a sequence from its obfuscated token embeddings."""

    def __init__(self, embedding_dim: int = 16, num_classes: int = 4, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = alpha
        self.noise = GaussianNoiseLayer(embedding_dim, hidden_dim=32, init_std=0.1)
        self.head = nn.Linear(embedding_dim, num_classes)
        # The attribute name is what ComponentLossLogger(module_attribute=...) looks up.
        self.privacy = SubBatchMutualInformation(granularity="token", units="bits")

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        embeddings, noise_mask, labels = batch
        noisy, means, stds = self.noise(embeddings, noise_mask)
        mi = self.privacy(means, stds, noise_mask, embeddings, noisy)
        pooled = (noisy * noise_mask.unsqueeze(-1)).sum(1) / noise_mask.sum(1, keepdim=True)
        task = F.cross_entropy(self.head(pooled), labels)
        self.log("train/task_loss", task, on_step=True, on_epoch=True, prog_bar=True)
        return self.alpha * mi + (1 - self.alpha) * task

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def make_data(num: int = 512, length: int = 6, dim: int = 16, classes: int = 4) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randn(classes, dim, generator=generator)
    labels = torch.randint(classes, (num,), generator=generator)
    embeddings = prototypes[labels, None] + 0.5 * torch.randn(num, length, dim, generator=generator)
    noise_mask = torch.ones(num, length, dtype=torch.bool)
    noise_mask[:, -1] = False  # e.g. a special token that is never noised
    return TensorDataset(embeddings, noise_mask, labels)


def main() -> pl.Trainer:
    pl.seed_everything(0)
    log_root = Path(tempfile.mkdtemp(prefix="mi_losses_example_"))
    trainer = pl.Trainer(
        max_epochs=3,
        logger=CSVLogger(log_root, name="example"),
        log_every_n_steps=1,
        callbacks=[
            ComponentLossLogger(module_attribute="privacy", prefix="privacy"),
            *progress_bar(),
        ],
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    # drop_last: the sub-batch estimate needs an even batch size.
    loader = DataLoader(make_data(), batch_size=32, shuffle=True, drop_last=True)
    trainer.fit(PrivateClassifier(), loader)

    with (Path(trainer.logger.log_dir) / "metrics.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/task_loss_step")]
    key = "train/privacy/mutual_information_loss_step"
    components = [
        name.removeprefix("train/privacy/").removesuffix("_step")
        for name in sorted(trainer.logged_metrics)
        if name.startswith("train/privacy/") and name.endswith("_step")
    ]
    print(f"logged every step under train/privacy/: {', '.join(components)}")
    print(
        f"MI estimate (bits): step 0 {float(rows[0][key]):.2f} -> last {float(rows[-1][key]):.2f}"
    )
    print(
        f"task loss: step 0 {float(rows[0]['train/task_loss_step']):.3f} -> "
        f"last {float(rows[-1]['train/task_loss_step']):.3f}"
    )
    print(f"metrics CSV: {Path(trainer.logger.log_dir) / 'metrics.csv'}")
    return trainer


if __name__ == "__main__":
    main()
