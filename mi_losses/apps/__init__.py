"""Applications built on the library; nothing in :mod:`mi_losses` proper imports them.

- :mod:`mi_losses.apps.demo`: the synthetic demo task (data, frozen downstream encoder,
  ``ObfuscationTask``), Lightning only.
- :mod:`mi_losses.apps.cli`: the ``mi-losses`` command (extra ``cli``).
- :mod:`mi_losses.apps.minilm`: the real-model case study on all-MiniLM-L6-v2 (extra ``minilm``).
- :mod:`mi_losses.apps.privacy`: every layer of that study and the metric-DP baselines judged by
  every attacker, the learned inversion attack included (docs/frontier.md).
"""
