"""Sparse VideoGen2 attention (semantic-aware permutation) for video diffusion transformers."""

from svg2core.attention import svg2_attention
from svg2core.config import SVG2Config
from svg2core.state import LayerState, Workspace

__all__ = ["LayerState", "SVG2Config", "Workspace", "svg2_attention"]
