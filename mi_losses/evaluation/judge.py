"""Judge one layer by every attacker that applies, on one shared seeded draw of the validation text.

For a :class:`~mi_losses.evaluation.channels.StudyChannel`:

1. the validation sequences are noised once with ``torch.manual_seed(eval_seed)`` (the *shared
   draw*: every attacker and the utility read the same released embeddings);
2. utility: ``retrieval_at_1`` (a noisy sentence embedding's nearest clean one among all
   validation sentences is its own) and ``sentence_cosine`` of the frozen encoder;
3. ``nn_failure``: the lower of the nearest-row attacks by cosine and by L2 over the whole
   vocabulary; ``bayes_attack_failure``: the one-token Bayes attacker (context-free layers only);
   ``exact_mi_nats_per_token`` where the channel is known exactly;
4. ``inversion_failure``: an :class:`~mi_losses.attacks.inversion.InversionAttack` trained on the
   training split against the frozen channel (fresh noise every step) until its validation
   failure stops falling, evaluated on the shared draw. Where a Bayes attacker exists, a
   position whose Bayes guess is a token outside the inversion's candidates (never seen in
   training) takes the Bayes guess: the combined attacker is never weaker there.
5. ``strongest_attack_failure``: the lowest failure among the attackers that apply (with
   ``extra_inversions``, over every inversion attacker too).

Failures are fractions of the noised validation tokens missed by the top-1 guess (``*_top5_*``:
by the five best guesses).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch

from mi_losses.attacks.inversion import InversionAttack, inversion_guesses, train_inversion_attack
from mi_losses.attacks.nearest import nearest_token_ids
from mi_losses.evaluation.channels import Draw, StudyChannel
from mi_losses.evaluation.sentence import sentence_utility
from mi_losses.evaluation.sequences import Batch, StudyData, sequence_batches, training_loader


@dataclass
class InversionSettings:
    """How the learned inversion attack is built and trained (plain data, settable from YAML).

    Args:
        d_model: transformer width.
        num_layers: transformer layers.
        num_heads: attention heads.
        learning_rate: AdamW learning rate.
        batch_size: training sequences per step.
        max_epochs: upper bound on epochs over the training split.
        patience: validation runs without a fall before stopping.
        min_delta: smallest fall in validation failure that counts.
        val_check_interval: training steps of an epoch between validation runs (counted within
            the epoch, see :func:`~mi_losses.attacks.inversion.train_inversion_attack`;
            ``None``: once per epoch).
        use_posterior: add the one-token Bayes posterior where the layer has one.
        max_steps: upper bound on training steps (``-1``: none).
        schedule: ``"constant"`` learning rate or ``"cosine"`` (warm-up, then a cosine decay
            over the step budget, :class:`~mi_losses.attacks.inversion.InversionAttack`).
        selection_seed: ``None``: early stopping (and the weights kept) on the scored draw;
            else on a separate draw of the validation text from this seed, so the scored draw
            selects nothing.
    """

    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    learning_rate: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 12
    patience: int = 3
    min_delta: float = 0.002
    val_check_interval: int | None = None
    use_posterior: bool = True
    max_steps: int = -1
    schedule: Literal["constant", "cosine"] = "constant"
    selection_seed: int | None = None


def shared_draws(channel: StudyChannel, batches: list[Batch], eval_seed: int) -> list[Draw]:
    """The channel's draw on every batch from ``torch.manual_seed(eval_seed)`` (RNG state kept)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(eval_seed)
        return [channel.draw(batch["input_ids"], batch["noise_mask"]) for batch in batches]


@torch.no_grad()
def utility(
    encoder: torch.nn.Module,
    draws: list[Draw],
    batches: list[Batch],
    clean_sentences: torch.Tensor,
) -> dict[str, float]:
    """:func:`~mi_losses.evaluation.sentence_utility` of the released sequences."""
    noisy = torch.cat(
        [
            encoder.sentence_embedding(draw.embeddings, batch["attention_mask"])  # type: ignore[operator]
            for draw, batch in zip(draws, batches, strict=True)
        ]
    )
    return sentence_utility(noisy, clean_sentences)


def failures(guesses: torch.Tensor, ids: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-k failure of guesses ``(N, k)`` against the true ids ``(N,)``."""
    hit = guesses == ids.unsqueeze(-1)
    return 1.0 - float(hit[:, 0].float().mean()), 1.0 - float(hit.any(-1).float().mean())


def train_inversion(
    channel: StudyChannel,
    data: StudyData,
    val_batches: list[Batch],
    settings: InversionSettings,
    seed: int,
) -> InversionAttack:
    """An inversion attack trained against ``channel``, at its best validation weights."""
    pl.seed_everything(seed, verbose=False)
    candidates = channel.candidates
    attack = InversionAttack(
        candidates,
        data.table[candidates],
        d_model=settings.d_model,
        num_layers=settings.num_layers,
        num_heads=settings.num_heads,
        max_length=int(data.train.input_ids.shape[1]),
        learning_rate=settings.learning_rate,
        use_posterior=settings.use_posterior,
        schedule=settings.schedule,
    ).attach(channel)
    loader = training_loader(data.train, settings.batch_size, seed)
    return train_inversion_attack(
        attack,
        loader,
        val_batches,
        max_epochs=settings.max_epochs,
        max_steps=settings.max_steps,
        patience=settings.patience,
        min_delta=settings.min_delta,
        val_check_interval=settings.val_check_interval,
    )


def _attack_batches(draws: list[Draw], batches: list[Batch]) -> list[Batch]:
    """Validation batches carrying a fixed draw (``embeddings``, ``log_posterior`` if any)."""
    return [
        {**batch, "embeddings": draw.embeddings}
        | ({} if draw.log_posterior is None else {"log_posterior": draw.log_posterior})
        for draw, batch in zip(draws, batches, strict=True)
    ]


def _inversion_attack(
    channel: StudyChannel,
    data: StudyData,
    draws: list[Draw],
    batches: list[Batch],
    bayes: torch.Tensor | None,
    ids: torch.Tensor,
    settings: InversionSettings,
    seed: int,
) -> dict[str, Any]:
    """Train one inversion attack and score it on the shared ``draws`` (keys of step 4)."""
    start = time.perf_counter()
    val_batches = _attack_batches(draws, batches)
    selection = val_batches
    if settings.selection_seed is not None:
        selection = _attack_batches(
            shared_draws(channel, batches, settings.selection_seed), batches
        )
    attack = train_inversion(channel, data, selection, settings, seed)
    guesses = inversion_guesses(attack, val_batches)
    result: dict[str, Any] = {}
    if bayes is not None:
        outside = ~torch.isin(bayes[:, 0], channel.candidates)
        guesses[outside] = bayes[outside]
        result["bayes_fallback_tokens"] = int(outside.sum())
    result["failure"], result["top5_failure"] = failures(guesses, ids)
    result["curve"] = attack.validation_curve
    end = attack.training_end
    result["steps"] = end["steps"]
    result["epochs"] = end["epochs"]
    result["stopped_early"] = end["stopped_early"]
    result["best_step"] = end["best_step"]
    result["settings"] = asdict(settings)
    result["seconds"] = time.perf_counter() - start
    return result


def judge(
    channel: StudyChannel,
    encoder: torch.nn.Module,
    data: StudyData,
    *,
    layer: str,
    objective: str,
    parameter: str,
    value: float,
    seed: int,
    eval_seed: int = 0,
    inversion: InversionSettings | None = None,
    batch_size: int = 32,
    skip_inversion_below: float = 0.01,
    extra_inversions: Sequence[InversionSettings] = (),
) -> dict[str, Any]:
    """One point of the frontier (see the module docstring).

    ``extra_inversions``: more inversion attackers (for example a larger one with a learning
    rate schedule) trained where ``inversion`` is; each is scored like it and listed in
    ``extra_inversions`` (``failure``, ``top5_failure``, ``curve``, ``settings``, ...), and
    ``strongest_attack_failure`` is the lowest failure over all attackers.

    ``inversion=None`` skips the learned attack; so does a layer whose nearest-neighbour or
    Bayes failure is already below ``skip_inversion_below`` (the strongest failure can only be
    lower, and the layer is broken either way): ``inversion_failure`` is then ``None`` and
    ``inversion_skipped`` says why.
    """
    start = time.perf_counter()
    batches = sequence_batches(data.val, batch_size)
    draws = shared_draws(channel, batches, eval_seed)
    point: dict[str, Any] = {
        "layer": layer,
        "objective": objective,
        "parameter": parameter,
        "value": value,
        "seed": seed,
        "eval_seed": eval_seed,
    }
    point.update(utility(encoder, draws, batches, data.clean_sentences))
    ids = torch.cat([batch["input_ids"][batch["noise_mask"]] for batch in batches])
    noisy = torch.cat([d.embeddings[b["noise_mask"]] for d, b in zip(draws, batches, strict=True)])
    point["tokens_attacked"] = int(ids.shape[0])
    nn = {
        metric: 1.0 - float((nearest_token_ids(noisy, data.table, metric) == ids).float().mean())
        for metric in ("cosine", "l2")
    }
    point["nn_failure_cosine"], point["nn_failure_l2"] = nn["cosine"], nn["l2"]
    point["nn_failure"] = min(nn.values())
    bayes = channel.bayes_guesses(draws, batches)
    if bayes is None:
        point["bayes_attack_failure"] = point["bayes_top5_failure"] = None
    else:
        point["bayes_attack_failure"], point["bayes_top5_failure"] = failures(bayes, ids)
    point["exact_mi_nats_per_token"] = channel.exact_mutual_information(draws, batches)
    point["inversion_failure"] = point["inversion_top5_failure"] = None
    one_token = [point["nn_failure"], point["bayes_attack_failure"]]
    broken = min(f for f in one_token if f is not None) < skip_inversion_below
    if inversion is not None and broken:
        point["inversion_skipped"] = (
            f"a one-token attacker already fails on fewer than {skip_inversion_below:g} of tokens"
        )
    elif inversion is not None:
        attack = _inversion_attack(channel, data, draws, batches, bayes, ids, inversion, seed)
        point.update({f"inversion_{key}": value for key, value in attack.items()})
        if extra_inversions:
            point["extra_inversions"] = [
                _inversion_attack(channel, data, draws, batches, bayes, ids, settings, seed)
                for settings in extra_inversions
            ]
    applicable = [
        point[key]
        for key in ("nn_failure", "bayes_attack_failure", "inversion_failure")
        if point[key] is not None
    ]
    applicable += [attack["failure"] for attack in point.get("extra_inversions", [])]
    point["strongest_attack_failure"] = min(applicable)
    point.update(channel.describe())
    point["seconds"] = time.perf_counter() - start
    return point
