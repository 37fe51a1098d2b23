"""Applications built on the library; nothing in :mod:`mi_losses` proper imports them.

- :mod:`mi_losses.apps.demo`: the synthetic demo task (data, frozen downstream encoder,
  ``ObfuscationTask``), Lightning only.
- :mod:`mi_losses.apps.cli`: the ``mi-losses`` command (extra ``cli``).
- :mod:`mi_losses.apps.hf`: the ``mi-losses-hf`` job, a noise layer in front of any
  ``transformers`` model, trained and reported (extra ``hf``); its main job is
  ``configs/hf/minilm.yaml`` (a learned discrete channel), the Gaussian MiniLM case study
  ``configs/hf/minilm_gaussian.yaml``.
- :mod:`mi_losses.apps.privacy`: the privacy frontier, every layer and the metric-DP baselines
  judged by every attacker (:mod:`mi_losses.evaluation`), docs/frontier.md.
- :mod:`mi_losses.apps.calibrate`: every estimator against channels of known MI.
"""
