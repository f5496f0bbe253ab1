"""Per-layer state (cached k-means centroids) and the reusable buffer workspace.

Neither object is global: a pipeline owns one :class:`Workspace` shared by its layers and its jobs,
and each job one :class:`LayerState` per sparse layer, dropped at the end of the job so that no
centroid of one request can steer another.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class BranchCentroids:
    """Cached centroids of one CFG branch of one layer.

    Attributes:
        q: ``(B, H, Cq, D)`` fp32 query centroids.
        k: ``(B, H, Ck, D)`` fp32 key centroids.
    """

    q: torch.Tensor
    k: torch.Tensor

    def matches(self, batch: int, heads: int, num_q: int, num_k: int, head_dim: int,
                device: torch.device) -> bool:
        """Whether these centroids can warm-start a call of that shape (else a cold start is needed)."""
        return (tuple(self.q.shape) == (batch, heads, num_q, head_dim)
                and tuple(self.k.shape) == (batch, heads, num_k, head_dim)
                and self.q.device == device)


class LayerState:
    """Cached k-means centroids of one attention layer, kept separately per CFG branch.

    The batch axis of the centroids keeps every batch element's clustering apart. A branch's
    centroids are updated in place by each call (so a CUDA graph replay reads and writes the same
    memory); a shape change (other batch size, cluster count) starts that branch cold again.

    Example:
        >>> state = LayerState()
        >>> out, density = svg2_attention(q, k, v, cfg, state, branch=0)   # cold: kmeans_iters_init
        >>> out, density = svg2_attention(q, k, v, cfg, state, branch=0)   # warm: kmeans_iters
        >>> state.reset()                                                   # between jobs
    """

    def __init__(self) -> None:
        self.centroids: dict[int, BranchCentroids] = {}

    def get(self, branch: int) -> BranchCentroids | None:
        """The centroids of ``branch``, or None before its first call."""
        return self.centroids.get(branch)

    def put(self, branch: int, entry: BranchCentroids) -> None:
        self.centroids[branch] = entry

    def reset(self) -> None:
        """Forget every branch's centroids (the next call of each branch is cold)."""
        self.centroids.clear()

    def __len__(self) -> int:
        return len(self.centroids)


class Workspace:
    """Reusable device buffers of the sparse attention stages, shared by the layers of one pipeline.

    ``buffer(name, shape, dtype, device)`` returns a view of a flat buffer that is allocated on the
    first request and re-allocated only when a larger one (or another dtype/device) is asked for, so
    steady-state calls allocate nothing. Buffers hold only intermediates of one call: a call may
    overwrite anything a previous call left there. Not thread-safe: one workspace per stream.

    Buffers and constants are always normal tensors, also when the first request comes under
    ``torch.inference_mode`` (they are allocated with inference mode switched off): a normal tensor
    can be written in place both inside inference mode and outside it (under ``no_grad``), whereas an
    inference tensor could not be written by a later call made outside inference mode. So one workspace
    can serve every job of a pipeline, whichever of the two modes each job runs under.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._constants: dict[str, torch.Tensor] = {}
        # the views handed out, by request: a warm call asks ~40 times with the same arguments, and building each
        # view again cost ~10 us of host time apiece (the host sets the pace of a 480p step's attention calls)
        self._views: dict[tuple, torch.Tensor] = {}
        self.allocations = 0  # how many times a buffer was (re)allocated; lets tests check reuse

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A tensor of ``shape`` backed by the buffer called ``name`` (contents undefined). ``"cuda"`` means the
        current CUDA device, so it names the same buffer as that device's index (``cuda:0``).

        The same request returns the same view object while the buffer is not re-allocated (a view of a normal
        tensor, so it is written in place inside inference mode and outside it alike)."""
        indexless_cuda = device == "cuda" or (isinstance(device, torch.device) and device.type == "cuda"
                                              and device.index is None)
        key = (name, tuple(shape), dtype, device, torch.cuda.current_device() if indexless_cuda else None)
        view = self._views.get(key)
        if view is not None:
            return view
        numel = math.prod(shape)
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < numel:
            with torch.inference_mode(False):  # a normal tensor (see the class docstring)
                buf = torch.empty(max(numel, 1), dtype=dtype, device=device)
            self._buffers[name] = buf
            self.allocations += 1
            self._views = {k: v for k, v in self._views.items() if k[0] != name}  # views of the old buffer
        view = self._views[key] = buf[:numel].view(shape)
        return view

    def constant(self, name: str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A tensor built by ``build()`` on the first request for ``name`` and reused afterwards.

        For small index constants (cluster ids, row bases); ``name`` must encode everything the
        value depends on (sizes, device).
        """
        buf = self._constants.get(name)
        if buf is None:
            with torch.inference_mode(False):  # a normal tensor (see the class docstring)
                buf = build()
            self._constants[name] = buf
            self.allocations += 1
        return buf

    def nbytes(self) -> int:
        """Total bytes held."""
        tensors = [*self._buffers.values(), *self._constants.values()]
        return sum(b.numel() * b.element_size() for b in tensors)

    def clear(self) -> None:
        """Release every buffer."""
        self._buffers.clear()
        self._constants.clear()
        self._views.clear()
