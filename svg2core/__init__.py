"""Sparse VideoGen2 attention (semantic-aware permutation) for video diffusion transformers.

``svg2core.config`` is torch-free (the API process validates budgets with its rules); the names that need
torch are imported on first use, so ``import svg2core.config`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from svg2core.config import SVG2Config

if TYPE_CHECKING:
    from svg2core.attention import svg2_attention
    from svg2core.state import LayerState, Workspace

_LAZY = {"svg2_attention": "svg2core.attention", "LayerState": "svg2core.state", "Workspace": "svg2core.state"}

__all__ = ["LayerState", "SVG2Config", "Workspace", "svg2_attention"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'svg2core' has no attribute {name!r}")
