"""The device side of programmatic dependent launch (:mod:`svg2core.ops.pdl`) for the Triton kernels."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """First statement of a kernel launched with PDL: wait until the previous kernel of the stream has finished and
    its writes are visible (before any load or store of this kernel), then let the next kernel launch: its programs
    take the SMs this kernel's finished programs free, and wait in turn. No-op without ``PDL``."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
