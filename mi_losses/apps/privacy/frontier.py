"""The privacy frontier against every attacker: baselines, learned layers, metric-DP mechanisms.

``run`` judges (:func:`~mi_losses.evaluation.judge.judge`) every requested layer and writes its
points to ``output``; ``combine`` joins several runs into ``docs/privacy_frontier.json``, draws
``docs/privacy_frontier.png`` and ``docs/privacy_inversion_curves.png``, and rewrites the table
between the markers of ``docs/frontier.md``:

    PYTHONPATH=. python -m mi_losses.apps.privacy.frontier run --output runs/a.json \\
        --frequency_ks '[20, 25]' --santext_epsilons '[13]' --seeds '[0, 1]'
    PYTHONPATH=. python -m mi_losses.apps.privacy.frontier combine --inputs '[runs/a.json]'

Layers (``layer``, ``objective``, ``parameter``): ``isotropic`` (std), ``frequency_rule`` (``k``
most frequent training tokens at std 2.0, the rest at 0.02), ``learned_token`` (the MiniLM
study's context-free layer trained on the exact vocabulary MI, ``alpha``), ``laplace_dp`` and
``santext`` (``epsilon``), ``learned_sequence`` (a sequence-dependent layer trained on the
sub-batch MI or its InfoNCE lower bound, ``alpha``), ``learned_substitution`` (a learned
discrete channel over each token's nearest candidates on its exact MI, ``alpha``:
:mod:`mi_losses.apps.privacy.substitution`); ``--token_terms`` trains the context-free layer on
another privacy term (``learned_token`` with that term as ``objective``:
:mod:`mi_losses.apps.privacy.terms`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mi_losses.apps.privacy import builders
from mi_losses.apps.privacy.sequence import LayerKind
from mi_losses.apps.privacy.substitution import SubstitutionSettings, substitution_channel
from mi_losses.apps.privacy.terms import TokenTermSettings
from mi_losses.evaluation.channels import (
    StudyChannel,
)
from mi_losses.evaluation.judge import InversionSettings, judge
from mi_losses.evaluation.points import check_points, format_attackers, format_points
from mi_losses.evaluation.sequences import StudyData
from mi_losses.losses import AdversarySettings
from mi_losses.noise import FrequencyRuleNoise, IsotropicNoise

BASELINES = ("isotropic", "frequency_rule", "laplace_dp", "santext")
"""The ``layer`` values of the baselines."""

STYLES = {
    "isotropic": ("tab:gray", "o", "isotropic noise (std)"),
    "frequency_rule": ("tab:green", "D", "frequency rule (k)"),
    "laplace_dp": ("tab:purple", "v", "multivariate Laplace + projection (epsilon)"),
    "santext": ("tab:red", "P", "SanText (epsilon)"),
    "learned_token": ("tab:blue", "s", "learned, context-free, exact MI (alpha)"),
    "learned_sequence": ("tab:orange", "^", "learned, sequence-dependent (alpha)"),
    "learned_substitution": ("tab:brown", "X", "learned substitution, exact MI (alpha)"),
}

TABLE_START = "<!-- frontier-table -->"
TABLE_END = "<!-- /frontier-table -->"
HARDER_START = "<!-- harder-judge-table -->"
HARDER_END = "<!-- /harder-judge-table -->"


def load_study_data(
    encoder: Any,
    cache_dir: str | None = None,
    *,
    num_val: int = 192,
    max_length: int = 32,
    seed: int = 0,
) -> StudyData:
    """The study's data, from ``cache_dir/study_data_{num_val}_{max_length}_{seed}.pt`` if there.

    Args:
        encoder: the frozen :class:`~mi_losses.evaluation.SentenceEncoder`.
        cache_dir: folder of the cache (created); ``None`` = no cache.
        num_val: validation sequences (the retrieval gallery).
        max_length: tokens per sequence.
        seed: seed of the topic split.
    """
    from mi_losses.apps.hf.data import HFTextDataModule
    from mi_losses.evaluation import clean_sentence_embeddings

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"study_data_{num_val}_{max_length}_{seed}.pt"
        if path.is_file():
            return StudyData.from_dict(torch.load(path))
    datamodule = HFTextDataModule(max_length=max_length, num_val=num_val, seed=seed)
    datamodule.setup()
    assert datamodule.train_sequences is not None and datamodule.val_sequences is not None
    table = encoder.word_embedding_table.detach().clone()
    data = StudyData(
        datamodule.train_sequences,
        datamodule.val_sequences,
        table,
        datamodule.train_token_counts(table.shape[0]),
        clean_sentence_embeddings(encoder, datamodule.val_dataloader()),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data.to_dict(), path)
    return data


def run(
    output: str,
    isotropic_stds: list[float] | None = None,
    frequency_ks: list[int] | None = None,
    santext_epsilons: list[float] | None = None,
    laplace_epsilons: list[float] | None = None,
    learned_token_alphas: list[float] | None = None,
    sequence_objectives: list[str] | None = None,
    sequence_alphas: list[float] | None = None,
    substitution_alphas: list[float] | None = None,
    substitution: SubstitutionSettings | None = None,
    adversary: AdversarySettings | None = None,
    sequence_layer: LayerKind = "sequence",
    adversary_nearest: bool = False,
    token_terms: list[TokenTermSettings] | None = None,
    seeds: list[int] | None = None,
    learned_steps: int = 60,
    cache_dir: str = "/tmp/mi_losses_privacy_cache",
    inversion: InversionSettings | None = None,
    extra_inversions: list[InversionSettings] | None = None,
    skip_inversion: bool = False,
    attack_text_fraction: float = 0.0,
    attack_text_seed: int = 0,
    attack_on_layer_text: bool = False,
    num_threads: int | None = 1,
) -> list[dict[str, Any]]:
    """Judge every requested layer for every seed; write the points to ``output`` after each.

    Args:
        output: JSON file of this run's points.
        isotropic_stds, frequency_ks, santext_epsilons, laplace_epsilons: the baselines' grids.
        learned_token_alphas: ``alpha`` of the context-free layer trained on the exact MI.
        sequence_objectives: ``"sub_batch"``, ``"infonce"`` and/or ``"adversarial"`` (against
            an inversion attack trained alongside) for the sequence layer.
        sequence_alphas: ``alpha`` per entry of ``sequence_objectives``.
        substitution_alphas: ``alpha`` of the learned substitution channel.
        substitution: its settings (defaults of :class:`SubstitutionSettings`).
        adversary: how the ``"adversarial"`` objective's adversary is kept strong and what the
            layer minimises (:class:`~mi_losses.losses.AdversarySettings`); the point's
            objective is then ``adversarial_<its objective>`` and its settings are recorded.
        sequence_layer: the layer the sequence objectives train: ``"sequence"`` or ``"token"``
            (context-free, judged as ``learned_token``).
        adversary_nearest: the adversary starts as nearest neighbour (its posterior input).
        token_terms: context-free layers trained on a chosen privacy term, one point each
            (:class:`~mi_losses.apps.privacy.terms.TokenTermSettings`).
        seeds: seeds of the layer's and the inversion attack's training (the validation
            noise is always drawn from seed 0, shared by every attacker of a point).
        learned_steps: training steps of the learned layers.
        cache_dir: where the study's data are cached.
        inversion: the inversion attack's settings (defaults of :class:`InversionSettings`).
        extra_inversions: more inversion attackers per point (the strongest failure is over
            all of them).
        skip_inversion: judge by nearest neighbour and Bayes only.
        attack_text_fraction: ``0``: the layers and the inversion attacks train on the same
            training sequences; else this share of them (a permutation from
            ``attack_text_seed``, :meth:`~mi_losses.evaluation.sequences.StudyData.disjoint_training`)
            trains the attacks only and the rest the learned layers only (the fixed layers
            are unchanged; the token counts stay the whole training text's).
        attack_text_seed: seed of that split.
        attack_on_layer_text: with ``attack_text_fraction``, the attacks train on the layer's
            part instead (a control: as little text, not disjoint).
        num_threads: torch CPU threads.
    """
    from mi_losses.apps.hf.data import model_directory, transformers_offline
    from mi_losses.evaluation import SentenceEncoder
    from mi_losses.huggingface import load_pretrained

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    settings = None if skip_inversion else (inversion or InversionSettings())
    transformers_offline()
    encoder = SentenceEncoder(load_pretrained(model_directory(None), local_files_only=True))
    data = load_study_data(encoder, cache_dir)
    if attack_on_layer_text and not attack_text_fraction:
        raise ValueError("attack_on_layer_text needs an attack_text_fraction in (0, 1), got 0")
    layer_data, attack_data = data, data
    if attack_text_fraction:
        layer_data, attack_data = data.disjoint_training(attack_text_fraction, attack_text_seed)
        if attack_on_layer_text:
            attack_data = layer_data
    out_path = Path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, str, str, float, Callable[[int], StudyChannel]]] = []
    build: Callable[[int], StudyChannel]
    for std in isotropic_stds or []:
        build = partial(builders.gaussian_channel, IsotropicNoise(std), layer_data)
        jobs.append(("isotropic", "none", "std", std, build))
    for k in frequency_ks or []:
        build = partial(
            builders.gaussian_channel, FrequencyRuleNoise(layer_data.counts, k), layer_data
        )
        jobs.append(("frequency_rule", "none", "k", k, build))
    for name, epsilons in (("laplace_dp", laplace_epsilons), ("santext", santext_epsilons)):
        for epsilon in epsilons or []:
            jobs.append(
                (
                    name,
                    "none",
                    "epsilon",
                    epsilon,
                    partial(builders.release_channel, name, epsilon, layer_data),
                )
            )
    for alpha in learned_token_alphas or []:
        build = partial(builders.learned_token_channel, layer_data, alpha, learned_steps)
        jobs.append(("learned_token", "exact_vocabulary_mi", "alpha", alpha, build))
    for objective, alpha in zip(sequence_objectives or [], sequence_alphas or [], strict=True):
        build = partial(
            builders.learned_sequence_channel, encoder, layer_data, objective, alpha, learned_steps,
            adversary=adversary, noise_layer=sequence_layer, nearest_attack=adversary_nearest,
        )  # fmt: skip
        label = (
            f"adversarial_{adversary.objective}"
            if adversary and objective == "adversarial"
            else objective
        )
        layer_name = "learned_token" if sequence_layer == "token" else "learned_sequence"
        jobs.append((layer_name, label, "alpha", alpha, build))
    for alpha in substitution_alphas or []:
        recipe = substitution or SubstitutionSettings()
        build = partial(substitution_channel, encoder, layer_data, alpha, learned_steps, recipe)
        jobs.append(("learned_substitution", "exact_channel_mi", "alpha", alpha, build))
    for term in token_terms or []:
        build = partial(builders.term_token_channel, layer_data, term, learned_steps)
        jobs.append(("learned_token", term.objective, "alpha", term.alpha, build))
    points: list[dict[str, Any]] = []
    for layer, objective, parameter, value, build in jobs:
        for seed in seeds or [0]:
            start, cpu_start = time.perf_counter(), time.process_time()
            channel = build(seed)
            build_seconds = time.perf_counter() - start
            point = judge(
                channel,
                encoder,
                attack_data,
                layer=layer,
                objective=objective,
                parameter=parameter,
                value=value,
                seed=seed,
                inversion=settings,
                extra_inversions=extra_inversions or (),
            )
            point["build_seconds"] = build_seconds
            if adversary is not None and objective.startswith("adversarial_"):
                point["adversary"] = asdict(adversary) | {"nearest": adversary_nearest}
            point["cpu_seconds"] = time.process_time() - cpu_start
            point["attack_text_fraction"] = attack_text_fraction
            point["attack_text_seed"] = attack_text_seed if attack_text_fraction else None
            point["attack_on_layer_text"] = attack_on_layer_text
            point["layer_train_sequences"] = len(layer_data.train)
            point["attack_train_sequences"] = len(attack_data.train)
            points.append(point)
            out_path.write_text(json.dumps(points, indent=1) + "\n")
            print(summary(point), flush=True)
    return points


def summary(point: dict[str, Any]) -> str:
    """One line per point."""

    def cell(key: str) -> str:
        value = point.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    return (
        f"{point['layer']} {point['objective']} {point['parameter']}={point['value']:g} "
        f"seed {point['seed']}: retrieval@1 {cell('retrieval_at_1')} NN {cell('nn_failure')} "
        f"Bayes {cell('bayes_attack_failure')} inversion {cell('inversion_failure')} "
        f"strongest {cell('strongest_attack_failure')} MI {cell('exact_mi_nats_per_token')}"
    )


def combine(
    inputs: list[str],
    output_json: str = "docs/privacy_frontier.json",
    figure: str = "docs/privacy_frontier.png",
    curves: str = "docs/privacy_inversion_curves.png",
    page: str | None = "docs/frontier.md",
) -> list[dict[str, Any]]:
    """Join runs; write the JSON, both figures and the table of ``page`` (between its markers)."""
    points = [point for name in inputs for point in json.loads(Path(name).read_text())]
    check_points(points)
    Path(output_json).write_text(json.dumps(points, indent=1) + "\n")
    from mi_losses.apps.privacy.plots import plot, plot_curves

    plot(points, figure)
    plot_curves(points, curves)
    table = format_points(points, order=list(STYLES))
    _write_table(page, TABLE_START, TABLE_END, table)
    print(table)
    return points


def _write_table(page: str | None, start: str, end: str, table: str) -> None:
    """Replace what lies between the markers ``start`` and ``end`` of ``page`` by ``table``."""
    if page is None or not Path(page).is_file():
        return
    text = Path(page).read_text()
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        Path(page).write_text(f"{head}{start}\n{table}\n{end}{tail}")


def combine_attackers(
    inputs: list[str],
    output_json: str = "docs/privacy_harder_judge.json",
    page: str | None = "docs/frontier.md",
) -> list[dict[str, Any]]:
    """Join runs judged by several attackers (the harder judge) without averaging: write the
    JSON and one row per point (:func:`~mi_losses.evaluation.points.format_attackers`) between
    the page's ``harder-judge-table`` markers."""
    points = [point for name in inputs for point in json.loads(Path(name).read_text())]
    check_points(points)
    Path(output_json).write_text(json.dumps(points, indent=1) + "\n")
    table = format_attackers(points)
    _write_table(page, HARDER_START, HARDER_END, table)
    print(table)
    return points


def main(args: list[str] | None = None) -> None:
    """Command line: ``run``, ``combine`` and ``combine_attackers`` with their arguments as
    ``--name value``."""
    from jsonargparse import CLI

    CLI([run, combine, combine_attackers], args=args)


if __name__ == "__main__":
    main()
