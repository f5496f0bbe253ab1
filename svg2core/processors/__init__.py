"""diffusers attention processors that route self-attention through svg2 (one file per model family).

Use :func:`svg2core.integration.apply_svg2` rather than installing these by hand: it also attaches
the router and the step hooks the processors rely on.
"""

from .hunyuan import SVG2HunyuanVideoAttnProcessor
from .wan import SVG2WanAttnProcessor

__all__ = ["SVG2HunyuanVideoAttnProcessor", "SVG2WanAttnProcessor"]
