"""Programmatic dependent launch (PDL) of the selection's Triton kernels: the switch and the launch options.

The selection is a chain of short kernels on each of its two streams (k-means assign, counting sort, update; the
scoring and selection; the gather), each launched after the previous one has finished. With PDL (sm_90 and later)
a kernel of the chain is launched while its predecessor drains: its programs wait in ``griddepcontrol.wait`` (the
kernels' ``PDL`` flag, :func:`svg2core.ops.triton_pdl.pdl_enter`) until the predecessor has finished and its writes
are visible, so the launch latency and the predecessor's tail overlap. Every kernel that is launched with PDL waits
before its first memory access, reads and writes alike (the workspace buffers are reused across stages), so the
result is that of the plain launches; the switch changes only timing. CUDA-graph capture keeps the programmatic
edges.

Off until it is timed on a GPU (bench/probes/probe_timeline.py compares both).
"""

from __future__ import annotations

import os

import torch

#: Launch the selection's Triton kernels with PDL where the device supports it (CUDA, compute capability >= 9.0,
#: not the Triton interpreter).
ENABLED = False


def launch_options(x: torch.Tensor) -> dict:
    """Keyword arguments for a selection kernel's launch on ``x``'s device: ``{"PDL": True, "launch_pdl": True}``
    with PDL in force, else none (the kernels' ``PDL`` flag defaults to off)."""
    if not ENABLED or not x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return {}
    if torch.cuda.get_device_capability(x.device)[0] < 9:
        return {}
    return {"PDL": True, "launch_pdl": True}
