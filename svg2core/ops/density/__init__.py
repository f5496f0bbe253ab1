"""A call's density and its accumulation into a job's accounting: reference + Triton kernels + wrapper."""

from svg2core.ops.density.density import accumulate_density, selection_density
from svg2core.ops.density.reference import (
    accumulate_density_reference,
    selection_density_reference,
    text_keys,
)

__all__ = [
    "accumulate_density",
    "accumulate_density_reference",
    "selection_density",
    "selection_density_reference",
    "text_keys",
]
