"""Hopper (sm_90) Gluon kernel of the variable-block sparse flash attention: warp-specialised.

Same function as the video-query part of ``kernel.sparse_attn_fwd_kernel`` (see there for the layout
tensors and the mapping of a program to a query tile), with FlashAttention-3's structure, which the
Triton compiler does not produce from the plain loop (docs/benchmarks/NOTES_sparse_attn.md):

- **three partitions of one warpgroup each** (12 warps per CTA): two consumer warpgroups, each owning
  64 of the tile's 128 query rows, and one producer warpgroup;
- the **producer** computes the kp rows of each key tile (a segment search over ``sel_cum``: from the previous
  tile's segment, or with TILE_SEG inside the tile's window of tables.py's ``tile_seg``, rows from its
  ``seg_base``) and gathers the K and V rows into a ring of shared-memory stages with ``cp.async`` (TMA for
  the chunks inside one segment was tried and measured slower, NOTES_sparse_attn.md v8); each producer thread
  arrives on the stage's "full" mbarrier when its copies have landed (``cp.async.mbarrier.arrive``);
- each **consumer** waits on "full", issues the QK wgmma of tile t and the PV wgmma of tile t-1
  back to back, runs the softmax of tile t while PV(t-1) is on the tensor cores, then releases the
  stage of tile t-1 ("empty" mbarrier, one arrival per consumer). The two consumers are not
  synchronised with each other beyond sharing the stages, so the warp schedulers overlap one's
  softmax with the other's wgmma.

Key tiles are BLOCK_N positions of the concatenated selected key ranges, then (T > 0) ceil(T / BLOCK_N)
tiles of trailing text keys read from the original k / v (masked by the key padding mask). Only the
last video tile and the text tiles are masked.

With TAIL_M = 0 (the Hopper default) every video query tile runs here; a tile of <= 64 rows (a cluster's
remainder) leaves warpgroup 1 idle (it only passes the stages on) and warpgroup 0 has the tensor cores to
itself. With TAIL_M > 0, remainders of <= TAIL_M rows are left to the Triton kernel's ``TAIL_ONLY`` launch
(measured slower, as was a second launch of this kernel with one consumer warpgroup per CTA: NOTES_sparse_attn.md v13).
The text-query tiles always run on the Triton kernel (a text-only launch).

With PERSISTENT (``KernelConfig.gluon_persistent``, off: measured 4-7% slower, NOTES_sparse_attn.md v8) there is
one program per SM: its producer takes tiles from an atomic counter over the work list of
``tables.query_tile_list`` and announces each to the consumers through a two-slot item ring (mbarriers); the
stage ring's count runs on across tiles.

There is no interpreter for Gluon: this kernel is checked on the GPU against the torch reference
(bench/bench_sparse_attn.py, bench/probes/probe_gluon*.py, tests/svg2core/test_sparse_attn_hopper.py); on
the CPU only its compilation for sm_90 is tested.
"""

from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy,
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from svg2core.ops.gluon_hopper import barrier as _barrier
from svg2core.ops.gluon_hopper import copy_layout as _copy_layout
from svg2core.ops.gluon_hopper import cp_async as _cp_async
from svg2core.ops.gluon_hopper import wgmma_layout as _wgmma_layout

_NEG_BIG: gl.constexpr = gl.constexpr(-1.0e30)
_CHUNK: gl.constexpr = gl.constexpr(32)  # key rows per copy batch of the producer


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _cumsum(x):
    """Inclusive prefix sum of a 1D tensor (Triton 3.6's Gluon has no cumsum)."""
    return gl.associative_scan(x, 0, _add)


@gluon.constexpr_function
def _log2(n):
    return int(n).bit_length() - 1


@gluon.jit
def _segment_of(sel_cum_row, j0, cnt, pos, WINDOW: gl.constexpr):
    """Largest j in [j0, min(j0 + WINDOW, cnt)) with ``sel_cum[j] <= pos``, given ``sel_cum[j0] <= pos``
    (pos a tensor or a scalar; WINDOW a power of two): log2(WINDOW) dependent, L1-resident loads."""
    lo = j0 + pos * 0
    for i in gl.static_range(_log2(WINDOW)):
        mid = lo + (WINDOW >> (i + 1))
        v = gl.load(sel_cum_row + mid, mask=mid < cnt, other=2147483647)
        lo = gl.where(v <= pos, mid, lo)
    return lo


@gluon.jit
def _tile_map(QOFF, bh, CQ, tile, BLOCK_M: gl.constexpr, TAIL_M: gl.constexpr, CQ_BLOCK: gl.constexpr,
              num_warps: gl.constexpr):
    """(cluster, first sorted row, end row, active) of video tile ``tile`` of head ``bh``."""
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])
    offs_c = gl.arange(0, CQ_BLOCK, layout=lay)
    c_ok = offs_c < CQ
    qoff_bh = QOFF + bh * (CQ + 1)
    c_lo = gl.load(qoff_bh + offs_c, mask=c_ok, other=0)
    c_hi = gl.load(qoff_bh + offs_c + 1, mask=c_ok, other=0)
    n_tiles = (c_hi - c_lo + BLOCK_M - 1 - TAIL_M) // BLOCK_M
    cum_tiles = _cumsum(n_tiles)
    cl = gl.sum((cum_tiles <= tile).to(gl.int32), 0)
    active = cl < CQ
    first_tile = gl.sum(gl.where(offs_c < cl, n_tiles, 0), 0)
    q_start = gl.sum(gl.where(offs_c == cl, c_lo, 0), 0) + (tile - first_tile) * BLOCK_M
    q_end = gl.sum(gl.where(offs_c == cl, c_hi, 0), 0)
    q_end = gl.where(active, q_end, q_start)
    return cl, q_start, q_end, active


@gluon.jit
def _dispatch_fields(args):
    """What the partitions' dispatch (one item, or the persistent loop) reads of the arguments: the work list, the
    item ring and its counter, Nv, T, the K stages (for their constexpr shape), the item barriers, and the grid
    program's own item (the per-item tuple of ``_item_values``)."""
    mem, scalars, bufs, tables, dispatch, own = args
    ITEMS, ITEMRING, COUNTER, n_items, item_full, item_empty = dispatch
    return ITEMS, ITEMRING, COUNTER, n_items, scalars[4], scalars[5], bufs[2], item_full, item_empty, own


@gluon.jit
def _producer(args):
    """The producer partition: one work item (a grid program), or with PERSISTENT the items it takes from the
    shared counter, each announced to the consumers through this CTA's item ring."""
    ITEMS, ITEMRING, COUNTER, n_items, NV, T, k_bufs, item_full, item_empty, own = _dispatch_fields(args)
    BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
    HEAD_DIM: gl.constexpr = k_bufs.type.shape[2]
    PERSISTENT: gl.constexpr = item_full.type.shape[0] == 2
    if PERSISTENT:
        ring = ITEMRING + gl.program_id(0) * 2
        g = n_items * 0  # key tiles of the items done so far: the stage ring's running count
        i = n_items * 0  # items done so far: the item ring's running count
        w = gl.atomic_add(COUNTER, 1, sem="relaxed")
        while w < n_items:
            if gl.load(ITEMS + w.to(gl.int64) * 12) >= 0:  # an entry past its head's last tile is skipped here: the
                it = _item_of(ITEMS, w, NV, T, HEAD_DIM, BLOCK_N)  # consumers never see it
                _announce(ring, i, w, item_full, item_empty)
                _produce_item(args, it, g)
                g += it[11]
                i += 1
            w = gl.atomic_add(COUNTER, 1, sem="relaxed")
        _announce(ring, i, -1, item_full, item_empty)  # no more items
    else:
        _produce_item(args, own, 0)
    async_copy.commit_group()
    async_copy.wait_group(0)


@gluon.jit
def _item_values(bh, cl, active, q_start, q_end, H, NV, T, CQ, CK, SELCNT, SELCUM, stride_qb, stride_qh, stride_kb,
                 stride_kh, stride_vb, stride_vh, stride_ob, stride_oh, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr):
    """What a work item (video query tile ``q_start .. min(q_start + 128, q_end)`` of cluster ``cl`` of head
    ``bh``) needs: (bh, b, q_base, k_base, v_base, o_base, kp_base, pair, cnt, total, n_video, n_tiles, q_start,
    q_end). An inactive item (a grid program past its head's last tile) has no key tiles."""
    b = bh // H
    h = bh % H
    q_base = b.to(gl.int64) * stride_qb + h.to(gl.int64) * stride_qh
    o_base = b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh
    k_base = b.to(gl.int64) * stride_kb + h.to(gl.int64) * stride_kh
    v_base = b.to(gl.int64) * stride_vb + h.to(gl.int64) * stride_vh
    kp_base = bh.to(gl.int64) * NV * HEAD_DIM
    pair = bh.to(gl.int64) * CQ + gl.where(active, cl, 0)
    cnt = gl.load(SELCNT + pair)
    total = gl.load(SELCUM + pair * (CK + 1) + cnt)
    # surplus programs (past the last tile of their head) do nothing: both counts are 0, or the producer
    # would fill stages for consumers that skip them and wait forever for their release (the v5 hang)
    n_video = gl.where(active, gl.cdiv(total, BLOCK_N), 0)
    n_tiles = gl.where(active, n_video + gl.cdiv(T, BLOCK_N), 0)
    q_end = gl.where(active, q_end, q_start)
    return bh, b, q_base, k_base, v_base, o_base, kp_base, pair, cnt, total, n_video, n_tiles, q_start, q_end


@gluon.jit
def _item_of(ITEMS, w, NV, T, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr):
    """``_item_values`` of entry w of the work list (tables.query_tile_list, ``pair >= 0``), read from the entry."""
    e = ITEMS + w.to(gl.int64) * 12
    pair = gl.load(e)
    bh = gl.load(e + 3).to(gl.int32)
    total = gl.load(e + 5).to(gl.int32)
    n_video = gl.cdiv(total, BLOCK_N)
    # the (b, h) offsets are multiples of 8 elements (the wrapper only runs the persistent kernel then): 16-byte
    # aligned rows, which cp.async and the vector loads and stores need
    return (bh, gl.load(e + 10).to(gl.int32), gl.multiple_of(gl.load(e + 6), 8), gl.multiple_of(gl.load(e + 7), 8),
            gl.multiple_of(gl.load(e + 8), 8), gl.multiple_of(gl.load(e + 9), 8), bh.to(gl.int64) * NV * HEAD_DIM, pair,
            gl.load(e + 4).to(gl.int32), total, n_video, n_video + gl.cdiv(T, BLOCK_N), gl.load(e + 1).to(gl.int32),
            gl.load(e + 2).to(gl.int32))


@gluon.jit
def _announce(ring, i, w, item_full, item_empty):
    """Put item w (-1: none left) into slot i % 2 of this CTA's item ring for the two consumers."""
    slot = i % 2
    mbarrier.wait(item_empty.index(slot), ((i // 2) & 1) ^ 1)
    gl.store(ring + slot, w)
    _barrier()
    mbarrier.arrive(item_full.index(slot), count=1)


@gluon.jit
def _produce_item(args, it, g):
    """K / V stages of one work item: its key tiles are the stage ring's tiles g, g + 1, ..."""
    mem, scalars, bufs, tables, dispatch, own = args
    Q, K, V, KP, VP, OUT, QPERM, KOFF, SELIDX, SELCUM, KPM, KPERM = mem
    stride_qn, stride_kn, stride_vn, stride_on, NV, T, CK, qk_scale, has_kpm = scalars
    dbg_smem, q_smem, k_bufs, v_bufs, full_bars, empty_bars, rows_smem, turn_bars, pin_smem, tseg_smem = bufs
    SEGBASE, TILESEG, TILE_STRIDE = tables
    (bh, b, q_base, k_base, v_base, o_base, kp_base, pair, cnt, total, n_video, n_tiles, q_start, q_end) = it
    DEBUG: gl.constexpr = dbg_smem.type.shape[0] - 1  # bisect hooks (wrong results), 0 normally
    KV_PERM: gl.constexpr = dbg_smem.type.shape[1] == 2  # video K/V rows read from k / v through k_perm
    # constexprs do not pass through warp_specialize's arguments in Triton 3.6: read them off the buffers
    NUM_STAGES: gl.constexpr = k_bufs.type.shape[0]
    BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
    HEAD_DIM: gl.constexpr = k_bufs.type.shape[2]
    CHUNK: gl.constexpr = _CHUNK  # rows per copy batch: 4 16-byte vectors per thread, few live addresses
    cp_lay: gl.constexpr = _copy_layout(HEAD_DIM)
    crow_lay: gl.constexpr = gl.SliceLayout(1, cp_lay)
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, cp_lay))
    idx_lay: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])  # one key position per thread
    m = gl.arange(0, BLOCK_N, layout=idx_lay)
    mc = gl.arange(0, CHUNK, layout=crow_lay)
    sel_cum_row = SELCUM + pair * (CK + 1)
    sel_idx_row = SELIDX + pair * CK
    k_off_bh = KOFF + bh * (CK + 1)
    kp_head = KP + kp_base
    vp_head = VP + kp_base
    TILE_SEG: gl.constexpr = tseg_smem.type.shape[0] >= 2  # the key-tile tables (tables.py) are given
    tseg_row = TILESEG + pair * TILE_STRIDE
    sbase_row = SEGBASE + pair * CK
    j0 = cnt * 0
    # video key tiles: kp rows of positions t*BN .. t*BN+BN-1 of the concatenated selected ranges
    for t in range(n_video):
        s = (g + t) % NUM_STAGES
        p0 = t * BLOCK_N
        pos = p0 + m
        real = pos < total
        # segment of each position: the last j in a window of segments with sel_cum[j] <= pos, by a branchless
        # binary search (a tile spans at most BN segments, every selected cluster being non-empty). No
        # histogram / scan / cross-warp reduction here: in Triton 3.6 their scratch shared memory overlaps
        # the buffer that passes the partitions' arguments (it clobbered them: a hang).
        if TILE_SEG:
            # the tile's segments are tile_seg[t] .. tile_seg[t + 1]: a short window (the search steps wider
            # than it load nothing), known without the previous tile's search; one load gives the row
            j_lo = gl.load(tseg_row + t)
            j_hi = gl.load(tseg_row + t + 1)
            seg = _segment_of(sel_cum_row, j_lo, j_hi + 1, pos, BLOCK_N)
            rows = gl.load(sbase_row + seg, mask=real, other=0) + pos
        else:
            # the window starts at the tile's first segment j0, found by the previous tile's search
            seg = _segment_of(sel_cum_row, j0, cnt, pos, BLOCK_N)
            cluster = gl.load(sel_idx_row + seg, mask=real, other=0)
            rows = (gl.load(k_off_bh + cluster, mask=real, other=0) + pos
                    - gl.load(sel_cum_row + seg, mask=real, other=0))
        if (DEBUG & 4) != 0:  # bisect hook: contiguous kp rows (wrong result)
            rows = pos % NV
        if KV_PERM:  # the token of each cluster-ordered row: k / v are read in place
            rows = gl.load(KPERM + bh.to(gl.int64) * NV + rows, mask=real, other=0)
        if not TILE_SEG:  # first segment of the next tile: the same search for p0 + BN over a window of 2 * BN
            j0 = _segment_of(sel_cum_row, j0, cnt, p0 + BLOCK_N, 2 * BLOCK_N)
        _barrier()  # the previous tile's chunks have read rows_smem
        rows_smem.store(gl.where(real, rows, -1))
        _barrier()
        mbarrier.wait(empty_bars.index(s), (((g + t) // NUM_STAGES) & 1) ^ 1)
        for c in gl.static_range(BLOCK_N // CHUNK):
            _copy_chunk(rows_smem, k_bufs.index(s), v_bufs.index(s), c, K, V, k_base, v_base, stride_kn, stride_vn,
                        kp_head, vp_head, offs_d, crow_lay, KV_PERM, DEBUG)
        async_copy.mbarrier_arrive(full_bars.index(s), increment_count=False)
    # trailing text keys: rows Nv .. N-1 of the original k / v (zero-filled past T)
    for t in range(n_video, n_tiles):
        s = (g + t) % NUM_STAGES
        mbarrier.wait(empty_bars.index(s), (((g + t) // NUM_STAGES) & 1) ^ 1)
        for c in gl.static_range(BLOCK_N // CHUNK):
            cols = (t - n_video) * BLOCK_N + c * CHUNK + mc
            ok = (cols < T)[:, None]
            rows64 = (NV + cols).to(gl.int64)
            _cp_async(k_bufs.index(s).slice(c * CHUNK, CHUNK),
                      K + k_base + rows64[:, None] * stride_kn + offs_d[None, :], mask=ok)
            _cp_async(v_bufs.index(s).slice(c * CHUNK, CHUNK),
                      V + v_base + rows64[:, None] * stride_vn + offs_d[None, :], mask=ok)
        async_copy.mbarrier_arrive(full_bars.index(s), increment_count=False)


@gluon.jit
def _copy_chunk(rows_smem, k_stage, v_stage, c: gl.constexpr, K, V, k_base, v_base, stride_kn, stride_vn, kp_head,
                vp_head, offs_d, crow_lay: gl.constexpr, KV_PERM: gl.constexpr, DEBUG: gl.constexpr):
    """cp.async of chunk c (rows c*CHUNK ..) of a video key tile from the kp rows in ``rows_smem`` (-1: zero-filled;
    with KV_PERM, token rows of k / v)."""
    CHUNK: gl.constexpr = _CHUNK
    HEAD_DIM: gl.constexpr = k_stage.type.shape[1]
    r = rows_smem.slice(c * CHUNK, CHUNK).load(crow_lay)
    ok = (r >= 0)[:, None]
    if (DEBUG & 16) != 0:  # bisect hook: no K/V copies (stale stages: wrong result)
        ok = ok & (r < -1)[:, None]
    if KV_PERM:
        r64 = r.to(gl.int64)[:, None]
        _cp_async(k_stage.slice(c * CHUNK, CHUNK), K + k_base + r64 * stride_kn + offs_d[None, :], mask=ok)
        _cp_async(v_stage.slice(c * CHUNK, CHUNK), V + v_base + r64 * stride_vn + offs_d[None, :], mask=ok)
    else:
        off = r[:, None] * HEAD_DIM + offs_d[None, :]
        _cp_async(k_stage.slice(c * CHUNK, CHUNK), kp_head + off, mask=ok)
        _cp_async(v_stage.slice(c * CHUNK, CHUNK), vp_head + off, mask=ok)


@gluon.jit
def _consumer(args, WG: gl.constexpr):
    """A consumer partition (query rows WG * 64 .. WG * 64 + 63 of each tile): one work item, or with PERSISTENT
    every item the producer announces in this CTA's item ring until it announces -1."""
    ITEMS, ITEMRING, COUNTER, n_items, NV, T, k_bufs, item_full, item_empty, own = _dispatch_fields(args)
    BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
    HEAD_DIM: gl.constexpr = k_bufs.type.shape[2]
    PERSISTENT: gl.constexpr = item_full.type.shape[0] == 2
    if PERSISTENT:
        ring = ITEMRING + gl.program_id(0) * 2
        g = n_items * 0
        i = n_items * 0
        w = _receive(ring, i, item_full, item_empty)
        while w >= 0:
            it = _item_of(ITEMS, w, NV, T, HEAD_DIM, BLOCK_N)
            _consumer_item(args, it, g, WG)
            g += it[11]
            i += 1
            w = _receive(ring, i, item_full, item_empty)
    else:
        _consumer_item(args, own, 0, WG)


@gluon.jit
def _receive(ring, i, item_full, item_empty):
    """The item in slot i % 2 of this CTA's item ring (-1: none left); frees the slot."""
    slot = i % 2
    mbarrier.wait(item_full.index(slot), (i // 2) & 1)
    w = gl.load(ring + slot, volatile=True)
    _barrier()  # every thread of the warpgroup has read the slot before it is released
    mbarrier.arrive(item_empty.index(slot), count=1)
    return w


@gluon.jit
def _load_q_rows(Q, QPERM, q_smem, q_base, stride_qn, bh, NV, row0, q_end, WG: gl.constexpr, DEBUG: gl.constexpr):
    """Query rows row0 .. row0 + 63 (sorted positions, < q_end) gathered from q (token order) in 16-byte vectors
    into q_smem.index(WG); returns that buffer."""
    WG_M: gl.constexpr = 64
    HEAD_DIM: gl.constexpr = q_smem.type.shape[2]
    cp_lay: gl.constexpr = _copy_layout(HEAD_DIM)
    srt_c = row0 + gl.arange(0, WG_M, layout=gl.SliceLayout(1, cp_lay))
    ok_c = srt_c < q_end
    tok_c = gl.load(QPERM + bh.to(gl.int64) * NV + srt_c, mask=ok_c, other=0).to(gl.int64)
    offs_dc = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, cp_lay))
    q = gl.load(Q + q_base + tok_c[:, None] * stride_qn + offs_dc[None, :], mask=ok_c[:, None], other=0.0)
    q_wg = q_smem.index(WG)
    if (DEBUG & 2) == 0:  # bisect hook: 2 = leave q_smem unwritten (wrong result)
        q_wg.store(q)
        fence_async_shared()
        _barrier()
    return q_wg


@gluon.jit
def _store_rows(OUT, QPERM, o, l_i, o_base, stride_on, bh, NV, row0, q_end):
    """o / l of query rows row0 .. row0 + 63 (sorted positions, < q_end) stored at their tokens' rows of out."""
    WG_M: gl.constexpr = 64
    HEAD_DIM: gl.constexpr = o.shape[1]
    o_lay: gl.constexpr = _wgmma_layout(HEAD_DIM)
    orow_lay: gl.constexpr = gl.SliceLayout(1, o_lay)
    l_safe = gl.where(l_i > 0.0, l_i, 1.0)
    out = o / gl.convert_layout(l_safe, orow_lay)[:, None]
    srt = row0 + gl.arange(0, WG_M, layout=orow_lay)
    row_ok = srt < q_end
    tok = gl.load(QPERM + bh.to(gl.int64) * NV + srt, mask=row_ok, other=0).to(gl.int64)
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_lay))
    gl.store(OUT + o_base + tok[:, None] * stride_on + offs_d[None, :], out.to(OUT.dtype.element_ty),
             mask=row_ok[:, None])


@gluon.jit
def _consumer_item(args, it, g, WG: gl.constexpr):
    """One work item's 64 query rows of this warpgroup; its key tiles are the stage ring's tiles g, g + 1, ..."""
    mem, scalars, bufs, tables, dispatch, own = args
    Q, K, V, KP, VP, OUT, QPERM, KOFF, SELIDX, SELCUM, KPM, KPERM = mem
    stride_qn, stride_kn, stride_vn, stride_on, NV, T, CK, qk_scale, has_kpm = scalars
    dbg_smem, q_smem, k_bufs, v_bufs, full_bars, empty_bars, rows_smem, turn_bars, pin_smem, tseg_smem = bufs
    SEGBASE, TILESEG, TILE_STRIDE = tables
    (bh, b, q_base, k_base, v_base, o_base, kp_base, pair, cnt, total, n_video, n_tiles, q_start, q_end) = it
    DEBUG: gl.constexpr = dbg_smem.type.shape[0] - 1  # bisect hooks (wrong results), 0 normally
    # constexprs do not pass through warp_specialize's arguments in Triton 3.6: read them off the buffers
    NUM_STAGES: gl.constexpr = k_bufs.type.shape[0]
    BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
    HEAD_DIM: gl.constexpr = k_bufs.type.shape[2]
    WG_M: gl.constexpr = 64
    s_lay: gl.constexpr = _wgmma_layout(BLOCK_N)
    o_lay: gl.constexpr = _wgmma_layout(HEAD_DIM)
    p_lay: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_lay, k_width=2)
    srow_lay: gl.constexpr = gl.SliceLayout(1, s_lay)
    scol_lay: gl.constexpr = gl.SliceLayout(0, s_lay)
    dtype: gl.constexpr = OUT.dtype.element_ty

    # a remainder tile of <= 64 rows (TAIL_M = 0) leaves warpgroup 1 without rows: it then only passes the
    # stages on (waits "full", arrives "empty"), and warpgroup 0 has the tensor cores to itself
    if q_start + WG * 64 < q_end:
        # this warpgroup's 64 query rows, into its half of q_smem
        q_wg = _load_q_rows(Q, QPERM, q_smem, q_base, stride_qn, bh, NV, q_start + WG * WG_M, q_end, WG, DEBUG)

        o = gl.zeros([WG_M, HEAD_DIM], gl.float32, o_lay)
        m_i = gl.full([WG_M], _NEG_BIG, gl.float32, srow_lay)
        l_i = gl.zeros([WG_M], gl.float32, srow_lay)
        if n_tiles > 0:  # active tiles have n_video >= 1: every query cluster selects a non-empty key cluster
            # tile 0: scores and probabilities only; its PV product is issued together with tile 1's scores
            mbarrier.wait(full_bars.index(g % NUM_STAGES), (g // NUM_STAGES) & 1)
            _turn_wait(turn_bars, WG, 0)
            k0 = k_bufs.index(g % NUM_STAGES)
            s_acc = warpgroup_mma(q_wg, k0.permute((1, 0)), gl.zeros([WG_M, BLOCK_N], gl.float32, s_lay),
                                  use_acc=False, is_async=True)
            _turn_pass(turn_bars, WG)
            s_acc = warpgroup_mma_wait(0, deps=(s_acc, ))
            cols = gl.arange(0, BLOCK_N, layout=scol_lay)
            qk = gl.where((cols < total)[None, :], s_acc, float("-inf"))
            m_i = gl.maximum(m_i, gl.max(qk, 1) * qk_scale)
            p = gl.exp2(qk * qk_scale - m_i[:, None])
            l_i = gl.sum(p, 1)
            p_op = gl.convert_layout(p.to(dtype), p_lay)
            # full video key tiles: no mask at all
            for t in range(1, n_video - 1):
                o, m_i, l_i, p_op = _consumer_step(g + t, o, m_i, l_i, p_op, q_wg, k_bufs, v_bufs, full_bars, empty_bars,
                                                   turn_bars, pin_smem, WG, 0, KPM, b, T, 0, 0, qk_scale, False,
                                                   DEBUG, s_lay, o_lay, p_lay)
            # the last video tile (when it is not tile 0), the only partial one: masked by a column bound. A loop
            # of 0 or 1 trips rather than an ``if`` with tensor results, which made ptxas spill around the branch
            for t in range(gl.maximum(n_video - 1, 1), n_video):
                o, m_i, l_i, p_op = _consumer_step(g + t, o, m_i, l_i, p_op, q_wg, k_bufs, v_bufs, full_bars, empty_bars,
                                                   turn_bars, pin_smem, WG, total - t * BLOCK_N, KPM, b, T, 0, 0,
                                                   qk_scale, True, DEBUG, s_lay, o_lay, p_lay)
            # trailing text keys (joint attention), masked by the key padding mask
            for t in range(n_video, n_tiles):
                c0 = (t - n_video) * BLOCK_N
                o, m_i, l_i, p_op = _consumer_step(g + t, o, m_i, l_i, p_op, q_wg, k_bufs, v_bufs, full_bars, empty_bars,
                                                   turn_bars, pin_smem, WG, T - c0, KPM, b, T, c0, has_kpm, qk_scale,
                                                   True, DEBUG, s_lay, o_lay, p_lay)
            sl = (g + n_tiles - 1) % NUM_STAGES
            v_last = v_bufs.index(sl)
            _turn_wait(turn_bars, WG, n_tiles)
            o = warpgroup_mma(p_op, v_last, o, is_async=True)
            _turn_pass(turn_bars, WG)
            o = warpgroup_mma_wait(0, deps=(o, ))
            mbarrier.arrive(empty_bars.index(sl), count=1)
        _store_rows(OUT, QPERM, o, l_i, o_base, stride_on, bh, NV, q_start + WG * WG_M, q_end)
    else:
        _drain(n_tiles, g, full_bars, empty_bars, turn_bars, WG)


@gluon.jit
def _drain(n_tiles, g, full_bars, empty_bars, turn_bars, WG: gl.constexpr):
    """A consumer without query rows: keeps the stage protocol (and the ping-pong turns) going."""
    NUM_STAGES: gl.constexpr = full_bars.type.shape[0]
    for t in range(n_tiles):
        s = (g + t) % NUM_STAGES
        mbarrier.wait(full_bars.index(s), ((g + t) // NUM_STAGES) & 1)
        _turn_wait(turn_bars, WG, t)
        _turn_pass(turn_bars, WG)
        mbarrier.arrive(empty_bars.index(s), count=1)
    if n_tiles > 0:  # the final PV's turn
        _turn_wait(turn_bars, WG, n_tiles)
        _turn_pass(turn_bars, WG)


@gluon.jit
def _turn_wait(turn_bars, WG: gl.constexpr, k):
    """Ping-pong (``turn_bars`` of 2 barriers): before its k-th wgmma issue (k = 0, 1, ...) a consumer waits
    until the other one has issued its own k-th (WG 0) or k+1-th (WG 1) group, so the two consumers' matmuls
    reach the tensor cores alternately and one's softmax runs under the other's matmuls (FA3's schedule).
    WG 0's first wait passes at once (the parity of the phase before the first)."""
    if turn_bars.type.shape[0] == 2:
        mbarrier.wait(turn_bars.index(WG), (k & 1) ^ (1 - WG))


@gluon.jit
def _turn_pass(turn_bars, WG: gl.constexpr):
    """Ping-pong: hand the tensor cores to the other consumer (after issuing this step's wgmma)."""
    if turn_bars.type.shape[0] == 2:
        mbarrier.arrive(turn_bars.index(1 - WG), count=1)


@gluon.jit
def _row_max(x):
    """Row maxima of a 64 x N wgmma accumulator. A plain ``gl.max(x, 1)`` compiles to one dependent chain of
    N/4 FMNMX per row, one row after the other (~250 cycles of latency per key tile, on the path from the QK
    matmul to the exponentials); viewed as 64 x 4 x (N/32) x 8 (8: the columns that 4 lanes share), the in-thread
    part becomes 8 independent chains of N/32 and a short tree."""
    n: gl.constexpr = x.shape[1]
    return gl.max(gl.max(gl.max(gl.reshape(x, [x.shape[0], 4, n // 32, 8]), 2), 1), 1)


@gluon.jit
def _row_sum(x):
    """Row sums of a 64 x N wgmma accumulator, as independent in-thread chains (see ``_row_max``)."""
    n: gl.constexpr = x.shape[1]
    return gl.sum(gl.sum(gl.sum(gl.reshape(x, [x.shape[0], 4, n // 32, 8]), 2), 1), 1)


@gluon.jit
def _consumer_step(t, o, m_i, l_i, p_op, q_wg, k_bufs, v_bufs, full_bars, empty_bars, turn_bars, pin_smem,
                   WG: gl.constexpr, col_limit, KPM, b, T, c0, use_kpm, qk_scale, MASK: gl.constexpr,
                   DEBUG: gl.constexpr, s_lay: gl.constexpr, o_lay: gl.constexpr, p_lay: gl.constexpr):
    """Key tile t: QK(t) and PV(t-1) on the tensor cores, the softmax of tile t meanwhile, then release
    tile t-1's stage. With MASK, columns >= col_limit are masked, and with use_kpm != 0 also the padded
    text keys (``KPM[b, c0 + col] == 0``); full video tiles run without any mask."""
    NUM_STAGES: gl.constexpr = k_bufs.type.shape[0]
    BLOCK_N: gl.constexpr = k_bufs.type.shape[1]
    WG_M: gl.constexpr = 64
    dtype: gl.constexpr = k_bufs.dtype
    s = t % NUM_STAGES
    sp = (t - 1) % NUM_STAGES
    mbarrier.wait(full_bars.index(s), (t // NUM_STAGES) & 1)
    k_t = k_bufs.index(s)
    v_prev = v_bufs.index(sp)
    # zeros made here rather than hoisted: a loop-invariant zero tensor would pin 64 registers per thread
    if (DEBUG & 1) == 0:
        _turn_wait(turn_bars, WG, t)
        s_acc = warpgroup_mma(q_wg, k_t.permute((1, 0)), gl.zeros([WG_M, BLOCK_N], gl.float32, s_lay),
                              use_acc=False, is_async=(DEBUG & 8) == 0)
        o = warpgroup_mma(p_op, v_prev, o, is_async=(DEBUG & 8) == 0)
        _turn_pass(turn_bars, WG)
        if (DEBUG & 8) == 0:
            s_acc = warpgroup_mma_wait(1, deps=(s_acc, ))
    else:  # bisect hook: 1 = no wgmma in the loop (wrong result)
        _turn_wait(turn_bars, WG, t)
        _turn_pass(turn_bars, WG)
        s_acc = gl.zeros([WG_M, BLOCK_N], gl.float32, s_lay)
    if MASK:
        cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_lay))
        ok = cols < col_limit
        if use_kpm != 0:
            ok = ok & (gl.load(KPM + b * T + c0 + cols, mask=ok, other=0) != 0)
        qk = gl.where(ok[None, :], s_acc, float("-inf"))
    else:
        qk = s_acc
    m_new = gl.maximum(m_i, gl.convert_layout(_row_max(qk), m_i.type.layout) * qk_scale)
    p = gl.exp2(qk * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.convert_layout(_row_sum(p), l_i.type.layout)
    if (DEBUG & 9) == 0:
        # p_op (the A operand of PV(t-1), in registers) stays a dependency until here. ptxas nevertheless
        # schedules this wait freely among register-only instructions: by default it lands right after the row
        # max, before the exponentials (SASS, NOTES_sparse_attn.md v6), so the softmax overlaps the other
        # warpgroup's matmuls, not this PV. A shared-memory store stays before it, and the row sums need every
        # exponential: with PIN_WAIT, storing them (nobody reads them) keeps the wait after the whole softmax.
        # Measured within noise of the default on an H100 (NOTES_sparse_attn.md v7), so off by default.
        if pin_smem.type.shape[0] == 2 * WG_M:
            pin_smem.slice(WG * WG_M, WG_M).store(l_i)
        o, p_op = warpgroup_mma_wait(0, deps=(o, p_op))
    mbarrier.arrive(empty_bars.index(sp), count=1)
    o = o * gl.convert_layout(alpha, gl.SliceLayout(1, o_lay))[:, None]
    if (DEBUG & 32) == 0:
        p_op = gl.convert_layout(_pack_p(p, dtype), p_lay)
    else:  # comparison hook: the plain cast (correct result; 32 PRMT more per step)
        p_op = gl.convert_layout(p.to(dtype), p_lay)
    return o, m_new, l_i, p_op


@gluon.jit
def _pack_p(p, dtype: gl.constexpr):
    """``p.to(dtype)`` as one paired conversion per two scores (``cvt.rn.bf16x2.f32``). From the plain cast the
    PTX converts each score alone and packs the halves with ``mov.b32 {lo, hi}``; ptxas then fuses the pairs in
    the opposite order and swaps the halves back with a PRMT per register (32 per step)."""
    if dtype == gl.bfloat16:
        return gl.inline_asm_elementwise("cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,r,r", [p], dtype=gl.bfloat16,
                                         is_pure=True, pack=2)
    else:
        return gl.inline_asm_elementwise("cvt.rn.f16x2.f32 $0, $2, $1;", "=r,r,r", [p], dtype=gl.float16,
                                         is_pure=True, pack=2)


@gluon.jit
def _consumer_wg0(args):
    _consumer(args, 0)


@gluon.jit
def _consumer_wg1(args):
    _consumer(args, 1)


# HAS_KPM_I is a runtime flag on purpose: the JIT would compile a call with a padding mask (the int 1) as a
# constexpr specialisation, and ptxas then spilled in the consumers and the producer (85 spill stores without the
# key-tile tables, 12 with them, against 3-5): the call ran 12% slower at HunyuanVideo (NOTES_sparse_attn.md v11)
@gluon.jit(do_not_specialize=["HAS_KPM_I"])
def sparse_attn_fwd_gluon(
    Q, K, V, KP, VP, OUT,
    QPERM, QOFF, KOFF, SELIDX, SELCNT, SELCUM, KPM, KPERM,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    H, NV, T, CQ, CK,
    qk_scale, HAS_KPM_I, SEGBASE, TILESEG, TILE_STRIDE, ITEMS, ITEMRING, COUNTER, n_items,
    HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, CQ_BLOCK: gl.constexpr,
    TAIL_M: gl.constexpr, NUM_STAGES: gl.constexpr, PRODUCER_REGS: gl.constexpr,
    CONSUMER_REGS: gl.constexpr, PINGPONG: gl.constexpr = False, DEBUG: gl.constexpr = 0,
    KV_PERM: gl.constexpr = False, PIN_WAIT: gl.constexpr = False, TILE_SEG: gl.constexpr = False,
    PERSISTENT: gl.constexpr = False,
):
    BLOCK_M: gl.constexpr = 128
    # one program per (video query tile, head); with PERSISTENT one per SM, taking work items (entries of
    # tables.query_tile_list) from the counter COUNTER until n_items are taken (the values below then go unused)
    tile = gl.program_id(0)
    bh = gl.program_id(1)
    cl, q_start, q_end, active = _tile_map(QOFF, bh, CQ, tile, BLOCK_M, TAIL_M, CQ_BLOCK, gl.num_warps())
    (bh, b, q_base, k_base, v_base, o_base, kp_base, pair, cnt, total, n_video, n_tiles, q_start,
     q_end) = _item_values(bh, cl, active, q_start, q_end, H, NV, T, CQ, CK, SELCNT, SELCUM, stride_qb, stride_qh,
                           stride_kb, stride_kh, stride_vb, stride_vh, stride_ob, stride_oh, HEAD_DIM, BLOCK_N)

    dtype: gl.constexpr = Q.dtype.element_ty
    q_lay: gl.constexpr = gl.NVMMASharedLayout.get_default_for([64, HEAD_DIM], dtype)
    kv_lay: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    q_smem = gl.allocate_shared_memory(dtype, [2, 64, HEAD_DIM], q_lay)
    k_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM], kv_lay)
    v_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM], kv_lay)
    rows_smem = gl.allocate_shared_memory(gl.int32, [BLOCK_N], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    # constexprs do not pass through warp_specialize in Triton 3.6: DEBUG travels as this buffer's shape
    # (and KV_PERM as its second dimension)
    dbg_smem = gl.allocate_shared_memory(gl.int8, [DEBUG + 1, 2 if KV_PERM else 1],
                                         gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    full_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(full_bars.index(i), count=128)  # every producer thread arrives (cp.async.mbarrier.arrive)
        mbarrier.init(empty_bars.index(i), count=2)  # one arrival per consumer warpgroup
    # ping-pong turns of the two consumers (one arrival each); PINGPONG travels as the buffer's length
    turn_bars = gl.allocate_shared_memory(gl.int64, [2 if PINGPONG else 1, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2 if PINGPONG else 1):
        mbarrier.init(turn_bars.index(i), count=1)
    # the row sums' store that orders each PV wait after the softmax; PIN_WAIT travels as the buffer's length
    pin_smem = gl.allocate_shared_memory(gl.float32, [128 if PIN_WAIT else 2], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    # TILE_SEG travels as this buffer's length: 2 with the tables, else 1
    tseg_smem = gl.allocate_shared_memory(gl.int8, [2 if TILE_SEG else 1],
                                          gl.SwizzledSharedLayout(1, 1, 1, [0]))
    # PERSISTENT: the item ring's two slots (in ITEMRING, global) are handed over by these barriers; PERSISTENT
    # travels as their length
    item_full = gl.allocate_shared_memory(gl.int64, [2 if PERSISTENT else 1, 1], mbarrier.MBarrierLayout())
    item_empty = gl.allocate_shared_memory(gl.int64, [2 if PERSISTENT else 1, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2 if PERSISTENT else 1):
        mbarrier.init(item_full.index(i), count=1)  # the producer
        mbarrier.init(item_empty.index(i), count=2)  # both consumers

    # what the partitions read, by group (one tuple: constexprs do not pass through warp_specialize in Triton 3.6)
    args = ((Q, K, V, KP, VP, OUT, QPERM, KOFF, SELIDX, SELCUM, KPM, KPERM),
            (stride_qn, stride_kn, stride_vn, stride_on, NV, T, CK, qk_scale, HAS_KPM_I),
            (dbg_smem, q_smem, k_bufs, v_bufs, full_bars, empty_bars, rows_smem, turn_bars, pin_smem, tseg_smem),
            (SEGBASE, TILESEG, TILE_STRIDE),
            (ITEMS, ITEMRING, COUNTER, n_items, item_full, item_empty),
            (bh, b, q_base, k_base, v_base, o_base, kp_base, pair, cnt, total, n_video, n_tiles, q_start, q_end))
    gl.warp_specialize([(_consumer_wg0, (args, )), (_consumer_wg1, (args, )), (_producer, (args, ))],
                       [4, 4], [CONSUMER_REGS, PRODUCER_REGS])


# Registers per thread: 12 warps share 64K registers (168 each at launch); setmaxnreg then gives the two
# consumer warpgroups 232 and the producer 40 (232 * 256 + 40 * 128 = 168 * 384). Chosen from the sm_90
# compile of bench/probes/compile_sm90.py: the fewest spills in the consumers' loop.
_MAXNREG = 168
_CONSUMER_REGS = 232
_PRODUCER_REGS = 40


def launch_gluon(kernel_args: tuple, grid: tuple[int, int], qk_scale: float, has_kpm: bool, head_dim: int, cq: int,
                 cfg, kv_perm: bool = False, tables: tuple | None = None, work: tuple | None = None):
    """Launch the warp-specialised kernel over the 128-row video tiles. ``kernel_args``: the wrapper's
    argument prefix shared with the Triton kernel (tensors, strides, H, Nv, T, Cq, Ck; checked there).
    ``tables``: ``(seg_base, tile_seg)`` of tables.py for ``cfg.gluon_block_n`` (``cfg.gluon_tile_tables``).
    ``work`` (persistent kernel, ``cfg.gluon_persistent``): ``(items, ring, counter)``, the work list of
    ``tables.query_tile_list``, int32 ``(grid[0] * 2,)`` and a zeroed int32 ``(1,)``; ``grid`` is then
    ``(programs, 1)``. Returns the compiled kernel (its registers and shared memory)."""
    seg_base, tile_seg = tables if tables is not None else (kernel_args[6], kernel_args[6])  # never read without
    items, ring, counter = work if work is not None else (seg_base, seg_base, seg_base)  # never read without
    return sparse_attn_fwd_gluon[grid](
        *kernel_args,
        qk_scale, int(has_kpm), seg_base, tile_seg, tile_seg.shape[1] if tables is not None else 0,
        items, ring, counter, items.shape[0] if work is not None else 0,
        HEAD_DIM=head_dim, BLOCK_N=cfg.gluon_block_n, CQ_BLOCK=triton.next_power_of_2(cq), TAIL_M=cfg.tail_m,
        NUM_STAGES=cfg.gluon_stages, PRODUCER_REGS=_PRODUCER_REGS, CONSUMER_REGS=_CONSUMER_REGS,
        PINGPONG=cfg.gluon_pingpong, KV_PERM=kv_perm, PIN_WAIT=cfg.gluon_pin_wait, TILE_SEG=tables is not None,
        PERSISTENT=work is not None, DEBUG=cfg.gluon_debug, num_warps=4, maxnreg=_MAXNREG,
    )
