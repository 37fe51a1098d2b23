"""Tiny ``transformers`` checkpoints saved once per session.

The test modules that need ``transformers`` skip themselves without it (``importorskip``).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"bert": folder, "llama": folder, "gpt2": folder}``, each from ``save_pretrained``."""
    from mi_losses.apps.hf.tiny import KINDS, save_tiny

    root = tmp_path_factory.mktemp("tiny_models")
    return {kind: save_tiny(kind, root / kind) for kind in KINDS}
