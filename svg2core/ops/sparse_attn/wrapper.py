"""Public wrapper of the variable-block sparse flash attention: validation, config choice, launch."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton

from svg2core.state import Workspace

from .kernel import max_video_tiles, sparse_attn_fwd_kernel
from .tables import key_tile_tables, max_key_tiles, query_tile_list

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape and launch parameters of :func:`sparse_attention`."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    # Benchmark diagnostics only: read each selected range as contiguous kp rows instead of looking up
    # the segments (a wrong result) to measure what the key indexing costs.
    skip_key_index: bool = False
    # Remainder tiles: a query cluster's last ``size % block_m`` rows, when there are 1..tail_m of them,
    # run as one tile of tail_m rows in a second launch (tiles tail_m x tail_n, tail_warps, tail_stages)
    # instead of a block_m tile that is mostly padding. 0 = off (one launch, remainders padded).
    tail_m: int = 0
    tail_n: int = 64
    tail_warps: int = 4
    tail_stages: int = 3
    # Run the remainder launch on a second stream (forked from and joined back to the current one), so
    # its tiles fill the SMs that the main launch's last wave leaves idle instead of forming a wave of
    # their own. Both launches write disjoint rows of ``out``; the call stays graph-capturable.
    tail_concurrent: bool = False
    # (gluon) the text-query tiles' launch runs on a side stream, issued before the video tiles, so its few long
    # programs (a dense pass over every key each) overlap the video tiles rather than trailing them
    text_concurrent: bool = True
    # "triton": the portable kernel for every tile. "gluon" (Hopper only): the warp-specialised kernel of
    # gluon_kernel.py computes the 128-row video tiles (block_m must be 128), remainders included when
    # tail_m == 0 (else remainders of <= tail_m rows run the Triton kernel); text-query rows run the Triton kernel
    # (docs/benchmarks/NOTES_sparse_attn.md, v5, v6; v12 for torch's SDPA in its place, measured slower).
    impl: str = "triton"
    gluon_stages: int = 2
    # key rows per pipeline stage (and per QK / PV matmul) of the Gluon kernel: 128 or 64
    gluon_block_n: int = 128
    # FA3's ping-pong: the two consumer warpgroups take turns issuing their matmuls (mbarrier hand-off)
    gluon_pingpong: bool = False
    # store each tile's row sums to shared memory before the PV wait, which keeps ptxas from hoisting that wait
    # above the exponentials, so a warpgroup's softmax overlaps its own PV matmul. Measured within noise of
    # the unpinned wait on an H100 (NOTES_sparse_attn.md v7): off by default
    gluon_pin_wait: bool = False
    # the producer looks up each key tile's segment window and each segment's kp row base in two small tables
    # built per call (tables.py: one extra launch) instead of searching on from the previous tile's segment:
    # "on" or "off". H100 (NOTES_sparse_attn.md v7, v11): 4-7% faster at the Wan shapes, 8-10% at HunyuanVideo's
    # (with its text tokens and padding mask, once the mask flag stopped being compiled as a constant)
    gluon_tile_tables: str = "on"
    # one program per SM, each taking the video query tiles from a shared counter (a work list built per call by
    # tables.query_tile_list, one extra launch), so the producer loads the next tile's first key stages while
    # the consumers finish the current one, and no CTA is launched per tile. Not with gluon_pingpong
    gluon_persistent: bool = False
    # bisect hooks of the Gluon kernel (wrong results; bench/probes/debug_gluon.py): 1 no wgmma in the key
    # loop, 2 no q staging, 4 contiguous key rows, 8 synchronous wgmma (no QK/PV overlap), 16 no K/V copies;
    # 32 (correct result, for timing comparisons) converts P with a plain cast instead of paired conversions
    gluon_debug: int = 0

    def __post_init__(self) -> None:
        if self.tail_m and not (16 <= self.tail_m < self.block_m and self.tail_m & (self.tail_m - 1) == 0):
            raise ValueError(f"tail_m: must be 0 or a power of two in [16, block_m={self.block_m}), got {self.tail_m}")
        if self.impl not in ("triton", "gluon"):
            raise ValueError(f"impl: must be 'triton' or 'gluon', got {self.impl!r}")
        if self.gluon_block_n not in (64, 128):
            raise ValueError(f"gluon_block_n: must be 64 or 128, got {self.gluon_block_n}")
        if self.gluon_tile_tables not in ("on", "off"):
            raise ValueError(f"gluon_tile_tables: must be 'on' or 'off', got {self.gluon_tile_tables!r}")
        if self.gluon_persistent and self.gluon_pingpong:
            raise ValueError("gluon_persistent: not available with gluon_pingpong (its turns count per tile)")
        if self.impl == "gluon" and self.block_m != 128:
            raise ValueError(f"impl: 'gluon' computes 128-row query tiles, so block_m must be 128, got {self.block_m}")


# Keyed by (compute capability major, dtype, head_dim); ``None`` entries are wildcards. Hopper, D=128: the
# warp-specialised Gluon kernel (v7, docs/benchmarks/NOTES_sparse_attn.md; key-tile tables on, v11) for every
# video query tile, remainders included (tail_m=0: a remainder of <= 64 rows runs on
# warpgroup 0 alone, 1-6% faster than the v4 Triton remainder launch in one H200 run,
# probe_gluon_ablate_h200_notail.json); the Triton kernel only for the text-query tiles. Hopper, D=64: the v4 Triton kernel (the Gluon kernel compiles for D=64 but is
# not yet checked on a GPU there). The others are untuned starting points that fit those parts' shared memory.
_CONFIGS: dict[tuple[int | None, torch.dtype | None, int | None], KernelConfig] = {
    (9, None, 128): KernelConfig(block_m=128, block_n=128, num_warps=8, num_stages=3, impl="gluon", gluon_stages=3),
    (9, None, 64): KernelConfig(block_m=128, block_n=128, num_warps=8, num_stages=3, tail_m=64, tail_concurrent=True),
    (8, None, 128): KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=2),
    (8, None, 64): KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=3),
}
_DEFAULT_CONFIG = KernelConfig()


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_config(device: torch.device, dtype: torch.dtype, head_dim: int) -> KernelConfig:
    """The tuned config for this (architecture, dtype, head_dim), else a conservative default."""
    major = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else None
    for key in ((major, dtype, head_dim), (major, None, head_dim), (major, None, None)):
        if key in _CONFIGS:
            return _CONFIGS[key]
    return _DEFAULT_CONFIG


def key_sweep_layout(device: torch.device, dtype: torch.dtype, head_dim: int,
                     num_video_tokens: int) -> tuple[int, int]:
    """``(period, block_m)`` of a selection laid out in sweep order (``svg2core.ops.select.selection_in_sweep_order``)
    for the default kernel: its video query-tile programs in flight at once, and the query rows of one program (the
    config's ``block_m``). The period is 0 where that layout is not used.

    The Gluon kernel (Hopper, D = 128) holds one program per SM (its stage ring takes most of the shared memory), so
    the period is the SM count. The layout pays where a head's K and V outgrow half the L2: H100, sustained load,
    against the selection's own order, HunyuanVideo 720p 25% (61 MB a head) 6.1% faster, Wan 14B 720p 25% (39 MB)
    3.7%; Wan 1.3B 480p 15% (17 MB) unchanged, while the layout costs its selection ~1.7%, so it is off there
    (docs/benchmarks/NOTES_sparse_attn.md v18). The Triton kernel's occupancy varies with its config, and the layout
    is unmeasured there: 0.
    """
    cfg = default_config(device, dtype, head_dim)
    head_kv_bytes = 2 * num_video_tokens * head_dim * dtype.itemsize
    sweeps = (device.type == "cuda" and cfg.impl == "gluon" and not cfg.gluon_persistent
              and 2 * head_kv_bytes > _l2_bytes(device))
    return (_num_sms(device) if sweeps else 0), cfg.block_m


@functools.cache
def _l2_bytes(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).L2_cache_size


def _check(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype | tuple, device) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if t.dtype not in dtypes:
        raise ValueError(f"{name}: expected dtype {' or '.join(map(str, dtypes))}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name}: expected device {device}, got {t.device}")


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kp: torch.Tensor | None,
    vp: torch.Tensor | None,
    q_perm: torch.Tensor,
    q_offsets: torch.Tensor,
    k_offsets: torch.Tensor,
    sel_idx: torch.Tensor,
    sel_count: torch.Tensor,
    sel_cum: torch.Tensor,
    *,
    num_dense_tokens: int = 0,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    config: KernelConfig | None = None,
    k_perm: torch.Tensor | None = None,
    workspace: Workspace | None = None,
    partial_tiles: int | None = None,
) -> torch.Tensor:
    """Sparse attention of every query over its selected key clusters (plus trailing dense tokens).

    Exact attention under the mask of ``svg2core.ops.sparse_attn.reference`` (see there and
    docs/ARCHITECTURE.md for the layout tensors). No host-device synchronisation and no allocation
    except ``out`` when it is not given: the call can be captured in a CUDA graph (run it once
    before capture so the kernels are compiled). With ``tail_concurrent`` (the Hopper D=64 default) the
    small remainder tiles, and with ``text_concurrent`` (Gluon, the Hopper D=128 default) the text-query
    tiles, run in a second launch on a stream from torch's pool, forked from and joined back to the
    current stream, so the result is ready on the caller's stream as usual.

    Args:
        q, k, v: (B, H, N, D) bf16 or fp16, D in {64, 128}, last dim contiguous (any other strides).
            Only the trailing ``T`` text rows of ``k`` / ``v`` are read; video keys come from kp / vp.
        kp, vp: (B*H, Nv, D) contiguous, video K / V rows in key-cluster order; or both None and ``k_perm``
            given: the kernels then read the video rows of ``k`` / ``v`` in place, through ``k_perm``
            (no gathered copy: saves the gather's time and the two (B*H, Nv, D) buffers).
        q_perm: (B*H, Nv) int32, query tokens sorted by query cluster.
        q_offsets: (B*H, Cq + 1) int32; k_offsets: (B*H, Ck + 1) int32.
        sel_idx: (B*H, Cq, Ck) int32; sel_count: (B*H, Cq) int32; sel_cum: (B*H, Cq, Ck + 1) int32.
        num_dense_tokens: T, trailing tokens attended densely (joint-attention text), ``Nv = N - T``.
        key_padding_mask: (B, T) bool, True = valid text key; None means all valid.
        scale: softmax scale (> 0), default ``1 / sqrt(D)``.
        out: optional (B, H, N, D) output of q's dtype (last dim contiguous); every row is written.
        config: tile shape override (benchmarks); default from the per-architecture table.
        k_perm: (B*H, Nv) int32, the video key tokens in key-cluster order (row r of kp is token
            ``k_perm[bh, r]``); used only when kp / vp are None.
        workspace: holds the per-call key-tile tables of ``config.gluon_tile_tables`` (a fresh allocation
            when None: pass one in steady state and under CUDA graphs).
        partial_tiles: at most this many query clusters of a head end in a partly filled tile (default Cq); it
            bounds the grid. The query-tail union's layout (``svg2core.ops.tail_union``) has ``Cq + Cq // 2``
            clusters but at most the original ``Cq`` partly filled ones, so its caller passes that ``Cq``.

    Returns:
        out (B, H, N, D), rows in the original token order.
    """
    if q.dim() != 4:
        raise ValueError(f"q: expected 4 dims (B, H, N, D), got shape {tuple(q.shape)}")
    b, h, n, d = q.shape
    dev = q.device
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"q: expected dtype float16 or bfloat16, got {q.dtype}")
    if d not in (64, 128):
        raise ValueError(f"q: head dim D must be 64 or 128, got {d}")
    t = int(num_dense_tokens)
    if not 0 <= t < n:
        raise ValueError(f"num_dense_tokens: must be in [0, N) with N={n}, got {t}")
    nv = n - t
    bh = b * h
    for name, x in (("k", k), ("v", v)):
        _check(name, x, (b, h, n, d), q.dtype, dev)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.stride(3) != 1:
            raise ValueError(f"{name}: last dim must be contiguous (stride 1), got stride {x.stride(3)}")
    kv_perm = kp is None and vp is None
    if kv_perm:
        if k_perm is None:
            raise ValueError("k_perm: required when kp and vp are None")
        _check("k_perm", k_perm, (bh, nv), torch.int32, dev)
        if not k_perm.is_contiguous():
            raise ValueError("k_perm: must be contiguous")
        kp, vp = k, v  # never read as kp / vp (KV_PERM)
    elif kp is None or vp is None:
        raise ValueError("kp, vp: give both, or neither (with k_perm)")
    else:
        for name, x in (("kp", kp), ("vp", vp)):
            _check(name, x, (bh, nv, d), q.dtype, dev)
            if not x.is_contiguous():
                raise ValueError(f"{name}: must be contiguous")
    if q_offsets.dim() != 2 or k_offsets.dim() != 2:
        raise ValueError("q_offsets, k_offsets: expected 2 dims (B*H, C + 1)")
    cq = q_offsets.shape[1] - 1
    ck = k_offsets.shape[1] - 1
    if cq < 1 or ck < 1:
        raise ValueError(f"q_offsets, k_offsets: need at least one cluster, got Cq={cq}, Ck={ck}")
    _check("q_perm", q_perm, (bh, nv), torch.int32, dev)
    _check("q_offsets", q_offsets, (bh, cq + 1), torch.int32, dev)
    _check("k_offsets", k_offsets, (bh, ck + 1), torch.int32, dev)
    _check("sel_idx", sel_idx, (bh, cq, ck), torch.int32, dev)
    _check("sel_count", sel_count, (bh, cq), torch.int32, dev)
    _check("sel_cum", sel_cum, (bh, cq, ck + 1), torch.int32, dev)
    for name, x in (("q_perm", q_perm), ("q_offsets", q_offsets), ("k_offsets", k_offsets),
                    ("sel_idx", sel_idx), ("sel_count", sel_count), ("sel_cum", sel_cum)):
        if not x.is_contiguous():
            raise ValueError(f"{name}: must be contiguous")
    if key_padding_mask is not None:
        if t == 0:
            raise ValueError("key_padding_mask: given but num_dense_tokens is 0")
        _check("key_padding_mask", key_padding_mask, (b, t), torch.bool, dev)
        kpm = key_padding_mask.contiguous().view(torch.int8)
    else:
        kpm = q_perm  # never read (HAS_KPM=False)
    if out is None:
        out = torch.empty_like(q)
    else:
        _check("out", out, (b, h, n, d), q.dtype, dev)
        if out.stride(3) != 1:
            raise ValueError(f"out: last dim must be contiguous (stride 1), got stride {out.stride(3)}")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ValueError(f"scale: must be a positive finite number, got {scale}")
    cfg = config or default_config(dev, q.dtype, d)

    # the arguments both kernels (Triton and Gluon) take first, in the same order
    kernel_args = (
        q, k, v, kp, vp, out,
        q_perm, q_offsets, k_offsets, sel_idx, sel_count, sel_cum, kpm,
        k_perm if kv_perm else q_perm,  # never read without KV_PERM
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        h, nv, t, cq, ck,
    )

    def launch(grid, num_text_tiles, block_m, block_n, num_warps, num_stages, tail_only):
        sparse_attn_fwd_kernel[grid](
            *kernel_args, num_text_tiles,
            scale * _LOG2E,
            HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, CQ_BLOCK=triton.next_power_of_2(cq),
            HAS_KPM=key_padding_mask is not None, SKIP_KEY_INDEX=cfg.skip_key_index,
            TAIL_M=cfg.tail_m, TAIL_ONLY=tail_only, MAIN_M=cfg.block_m, KV_PERM=kv_perm,
            num_warps=num_warps, num_stages=num_stages,
        )

    def video_tiles_bound(block_m: int) -> int:
        bound = max_video_tiles(nv, cq, block_m)
        if partial_tiles is not None:  # whole tiles, and at most one partly filled tile per such cluster
            bound = min(bound, triton.cdiv(nv, block_m) + min(partial_tiles, nv))
        return bound

    # text tiles, full query tiles and remainders > tail_m rows; then (tail_m > 0) the small remainders.
    # jobs: (launch, on the side stream?) in issue order
    num_text_tiles = triton.cdiv(t, cfg.block_m) if t else 0
    if cfg.impl == "gluon":
        if not (q.is_cuda and torch.cuda.get_device_capability(dev)[0] == 9):
            raise ValueError("config.impl: 'gluon' needs a Hopper GPU (compute capability 9.x)")
        from .gluon_kernel import launch_gluon

        ws = workspace if workspace is not None else Workspace()  # allocates only on a buffer request

        def video_tiles():
            tables = None  # the key-tile tables of cfg.gluon_tile_tables
            if cfg.gluon_tile_tables == "on":
                tables = (ws.buffer("sparse_attn.seg_base", (bh * cq, ck), torch.int32, dev),
                          ws.buffer("sparse_attn.tile_seg", (bh * cq, max_key_tiles(nv, cfg.gluon_block_n) + 1),
                                    torch.int32, dev))
                key_tile_tables(sel_idx, sel_count, sel_cum, k_offsets, cfg.gluon_block_n, *tables)
            tiles_per_head = video_tiles_bound(128)
            grid, work = (tiles_per_head, bh), None
            bh_strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0),
                          out.stride(1)) if cfg.gluon_persistent else ()
            # the persistent kernel reads the (b, h) offsets from its work list and assumes them 16-byte aligned
            if cfg.gluon_persistent and all(x % 8 == 0 for x in bh_strides):
                programs = min(_num_sms(dev), tiles_per_head * bh)
                work = (ws.buffer("sparse_attn.items", (bh * tiles_per_head, 12), torch.int64, dev),
                        ws.buffer("sparse_attn.item_ring", (programs * 2,), torch.int32, dev),
                        ws.buffer("sparse_attn.item_counter", (1,), torch.int32, dev))
                query_tile_list(q_offsets, sel_count, sel_cum, h, bh_strides, 128, cfg.tail_m, work[0])
                work[2].zero_()
                grid = (programs, 1)
            launch_gluon(kernel_args, grid, scale * _LOG2E, key_padding_mask is not None, d, cq, cfg, kv_perm, tables,
                         work)

        jobs = [(video_tiles, False)]
        if num_text_tiles:
            # text queries: the Triton kernel's dense branch, only the text programs. Each is a dense pass over
            # every key, far longer than a video tile: issued first on the side stream, they run beside the video
            # tiles instead of as a tail of a few busy SMs after them
            text = functools.partial(launch, (num_text_tiles, bh), num_text_tiles, cfg.block_m, cfg.block_n,
                                     cfg.num_warps, cfg.num_stages, False)
            jobs.insert(0, (text, cfg.text_concurrent))
    else:
        grid = (num_text_tiles + video_tiles_bound(cfg.block_m), bh)
        jobs = [(functools.partial(launch, grid, num_text_tiles, cfg.block_m, cfg.block_n, cfg.num_warps,
                                   cfg.num_stages, False), False)]
    if cfg.tail_m:
        jobs.append((functools.partial(launch, (cq, bh), 0, cfg.tail_m, cfg.tail_n, cfg.tail_warps, cfg.tail_stages,
                                       True), cfg.tail_concurrent))
    main = side = None
    if q.is_cuda and any(concurrent for _, concurrent in jobs):
        main = torch.cuda.current_stream(dev)
        side = torch.cuda.Stream(dev)  # taken from torch's stream pool: no stream is created per call
        side.wait_stream(main)  # the side launches see everything queued before this call
    for job, concurrent in jobs:
        if concurrent and side is not None:
            with torch.cuda.stream(side):
                job()
        else:
            job()
    if side is not None:
        main.wait_stream(side)  # the caller's stream sees every launch done
    return out
