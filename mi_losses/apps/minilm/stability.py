"""Why the learned mean was bistable: the shift's size under Adam, old head against the new one.

Trains, from one seed and on the same batches, the sub-batch objective ``alpha * I + (1 - alpha)
* (1 - cos)`` with (a) :class:`LinearMeanNoiseLayer`, the library's first ``GaussianNoiseLayer``, whose mean
head is a zero-initialised ``Linear`` in absolute embedding units (the layer that collapsed; the
library layer is now bounded), and (b)
:class:`~mi_losses.noise.LearnedTokenNoise`, whose mean is ``mean_scale * tanh(.)``.
Prints, per block of ten steps, the utility loss, the mean std and ``|mu| / |x|``, the size of
the shift relative to the token's own embedding.

    PYTHONPATH=. python -m mi_losses.apps.minilm.stability --steps 100 --learning_rate 3e-3
"""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from mi_losses.apps.minilm.data import PydocTextDataModule
from mi_losses.apps.minilm.model import MiniLMEncoder
from mi_losses.apps.minilm.task import utility_loss
from mi_losses.losses import SubBatchMutualInformation
from mi_losses.noise import LearnedTokenNoise, NoisyEmbeddings


class LinearMeanNoiseLayer(torch.nn.Module):
    """The library's first noise layer, kept here as the measured counterexample.

    ``h = GELU(Linear(x))``, ``mu = Linear(h)`` (unbounded, zero-initialised) and
    ``sigma = min_std + (max_std - min_std) * sigmoid(Linear(h))`` started at ``init_std``.
    """

    def __init__(
        self,
        embedding_dim: int,
        hidden_dim: int = 128,
        min_std: float = 1e-3,
        max_std: float = 2.0,
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        self.min_std, self.max_std = min_std, max_std
        self.hidden = torch.nn.Sequential(
            torch.nn.Linear(embedding_dim, hidden_dim), torch.nn.GELU()
        )
        self.mean_head = torch.nn.Linear(hidden_dim, embedding_dim)
        self.std_head = torch.nn.Linear(hidden_dim, embedding_dim)
        torch.nn.init.zeros_(self.mean_head.weight)
        torch.nn.init.zeros_(self.mean_head.bias)
        torch.nn.init.zeros_(self.std_head.weight)
        fraction = (init_std - min_std) / (max_std - min_std)
        torch.nn.init.constant_(self.std_head.bias, float(torch.logit(torch.tensor(fraction))))

    def forward(self, embeddings: torch.Tensor, noise_mask: torch.Tensor) -> NoisyEmbeddings:
        hidden = self.hidden(embeddings)
        means = self.mean_head(hidden)
        stds = self.min_std + (self.max_std - self.min_std) * torch.sigmoid(self.std_head(hidden))
        noisy = embeddings + means + stds * torch.randn_like(embeddings)
        noisy = torch.where(noise_mask.bool().unsqueeze(-1), noisy, embeddings)
        return NoisyEmbeddings(noisy=noisy, means=means, stds=stds)


def trajectory(
    layer_kind: str,
    *,
    steps: int,
    learning_rate: float,
    alpha: float = 0.005,
    mean_scale: float = 0.02,
    seed: int = 0,
) -> list[tuple[float, float, float]]:
    """``(utility loss, mean std, |mu|/|x|)`` per step for ``layer_kind`` ``"linear"`` or ``"bounded"``."""
    pl.seed_everything(seed, verbose=False)
    datamodule = PydocTextDataModule(seed=seed)
    datamodule.setup()
    encoder = MiniLMEncoder()
    table = encoder.word_embedding_table
    sizes = {"min_std": 1e-3, "max_std": 0.5, "init_std": 0.02}
    layer: torch.nn.Module
    if layer_kind == "linear":
        layer = LinearMeanNoiseLayer(table.shape[1], hidden_dim=128, **sizes)
    else:
        layer = LearnedTokenNoise(table.shape[1], hidden_dim=128, mean_scale=mean_scale, **sizes)  # type: ignore[arg-type]
    estimator = SubBatchMutualInformation(granularity="token")
    optimizer = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], learning_rate)
    log: list[tuple[float, float, float]] = []
    while len(log) < steps:
        for batch in datamodule.train_dataloader():
            if len(log) >= steps:
                break
            ids, mask = batch["input_ids"], batch["noise_mask"].bool()
            attention = batch["attention_mask"].bool()
            clean = table[ids]
            out: NoisyEmbeddings = (
                layer(clean, mask) if layer_kind == "linear" else layer(ids, table, mask)
            )
            information = estimator(out.means, out.stds, mask, clean, out.noisy)
            with torch.no_grad():
                clean_sentence = encoder.sentence_embedding(clean, attention)
            utility = utility_loss(clean_sentence, encoder.sentence_embedding(out.noisy, attention))
            loss = alpha * information + (1 - alpha) * utility
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                ratio = (out.means[mask].norm(dim=-1) / clean[mask].norm(dim=-1)).mean()
            log.append((float(utility), float(out.stds[mask].mean()), float(ratio)))
    return log


def main(
    steps: int = 100,
    learning_rate: float = 3e-3,
    seed: int = 0,
    layers: tuple[str, ...] = ("linear", "bounded"),
) -> None:
    """Print the trajectories of ``layers`` in blocks of ten steps, and the CPU time."""
    torch.set_num_threads(1)
    start = time.process_time()
    print(
        "| layer | steps | utility loss | mean std | mean abs(mu)/abs(x) |\n|---|---|---|---|---|"
    )
    for kind in layers:
        log = trajectory(kind, steps=steps, learning_rate=learning_rate, seed=seed)
        for first in range(0, steps, 10):
            block = log[first : first + 10]
            means = [sum(values) / len(block) for values in zip(*block, strict=True)]
            print(
                f"| {kind} | {first + 1}-{first + len(block)} | {means[0]:.3f} | "
                f"{means[1]:.4f} | {means[2]:.3f} |",
                flush=True,
            )
    print(f"CPU {time.process_time() - start:.0f} s")


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main)
