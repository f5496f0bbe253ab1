"""Plain torch fp32 reference of the variable-block sparse attention: the specification.

The sparse attention of a (batch, head) is dense attention under a boolean mask built from the
cluster layout and the selection (docs/ARCHITECTURE.md, "the tensors passed between the stages"):

- video query token ``i`` (in query cluster ``cq(i)``) attends to video key row ``r`` of ``kp`` (in key
  cluster ``ck(r)``) iff ``ck(r)`` is among ``sel_idx[cq(i), :sel_count[cq(i)]]``;
- every video query also attends to every valid trailing text key;
- every text query attends to every video key and every valid text key.

Keys are taken in ``kp`` / ``vp`` order (cluster-contiguous); attention does not depend on the order
of the keys, so this is the same function as attention over the original ``k`` / ``v``.
"""

from __future__ import annotations

import math

import torch


def selected_cluster_mask(sel_idx: torch.Tensor, sel_count: torch.Tensor) -> torch.Tensor:
    """(BH, Cq, Ck) bool: ``[bh, i, c]`` is True iff key cluster ``c`` is selected for query cluster ``i``."""
    bh, cq, ck = sel_idx.shape
    slot_used = torch.arange(ck, device=sel_idx.device) < sel_count[..., None].long()  # (BH, Cq, Ck)
    idx = torch.where(slot_used, sel_idx.long(), torch.zeros((), dtype=torch.long, device=sel_idx.device))
    # scatter_add of counts, not scatter_ of booleans: unused slots all land on index 0 and must not
    # overwrite a real selection of cluster 0.
    hits = torch.zeros(bh, cq, ck, dtype=torch.int32, device=sel_idx.device)
    hits.scatter_add_(2, idx, slot_used.int())
    return hits > 0


def cluster_of_position(offsets: torch.Tensor, n: int) -> torch.Tensor:
    """(BH, n) long: the cluster of each sorted position ``0..n-1`` given ``offsets`` (BH, C + 1)."""
    pos = torch.arange(n, device=offsets.device).expand(offsets.shape[0], n).contiguous()
    return torch.searchsorted(offsets[:, 1:].long().contiguous(), pos, right=True)


def sparse_attention_mask(
    q_perm: torch.Tensor,
    q_offsets: torch.Tensor,
    k_offsets: torch.Tensor,
    sel_idx: torch.Tensor,
    sel_count: torch.Tensor,
    *,
    num_dense_tokens: int = 0,
    key_padding_mask: torch.Tensor | None = None,
    heads: int = 1,
    query_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean attention mask (BH, Nq, Nv + T) over keys in ``[kp; text]`` order.

    Queries are in original token order (``0..N-1``), or only the rows ``query_index`` (long, (Nq,)).
    ``heads`` is H, needed to map the flattened BH axis to the batch row of ``key_padding_mask``.
    """
    bh, nv = q_perm.shape
    t = num_dense_tokens
    dev = q_perm.device
    sel = selected_cluster_mask(sel_idx, sel_count)  # (BH, Cq, Ck)
    cq_sorted = cluster_of_position(q_offsets, nv)  # (BH, Nv) cluster of sorted query position
    cq_tok = torch.empty_like(cq_sorted)
    cq_tok.scatter_(1, q_perm.long(), cq_sorted)  # (BH, Nv) cluster of each original query token
    ck_row = cluster_of_position(k_offsets, nv)  # (BH, Nv) cluster of each kp row

    if query_index is None:
        query_index = torch.arange(nv + t, device=dev)
    is_video_q = query_index < nv
    qcl = cq_tok[:, query_index.clamp(max=max(nv - 1, 0))]  # (BH, Nq)
    # video part: sel[bh, cq(i), ck(r)]
    video = torch.gather(sel, 1, qcl[..., None].expand(bh, qcl.shape[1], sel.shape[2]))  # (BH, Nq, Ck)
    video = torch.gather(video, 2, ck_row[:, None, :].expand(bh, qcl.shape[1], nv))  # (BH, Nq, Nv)
    video = video | ~is_video_q[None, :, None]  # text queries see every video key
    if t == 0:
        return video
    if key_padding_mask is None:
        text_valid = torch.ones(bh, t, dtype=torch.bool, device=dev)
    else:
        text_valid = key_padding_mask.bool().repeat_interleave(heads, dim=0)  # (BH, T)
    text = text_valid[:, None, :].expand(bh, qcl.shape[1], t)
    return torch.cat([video, text], dim=2)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """fp32 softmax(q k^T * scale) v under a boolean mask; rows with no allowed key give 0."""
    s = torch.einsum("bqd,bkd->bqk", q.float(), k.float()) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("bqk,bkd->bqd", p, v.float())


def sparse_attention_reference(
    q, k, v, kp, vp, q_perm, q_offsets, k_offsets, sel_idx, sel_count, sel_cum=None,
    *, num_dense_tokens: int = 0, key_padding_mask=None, scale: float | None = None,
    query_index: torch.Tensor | None = None, query_chunk: int | None = None,
) -> torch.Tensor:
    """fp32 reference of :func:`svg2core.ops.sparse_attn.sparse_attention` (same arguments).

    Shapes: q, k, v (B, H, N, D); kp, vp (BH, Nv, D); index tensors as in docs/ARCHITECTURE.md.
    ``sel_cum`` is accepted for signature parity and not needed (the mask follows from ``sel_idx``).

    Returns fp32 (B, H, Nq, D) for the query rows ``query_index`` (all N rows by default). With
    ``query_chunk`` the rows are processed that many at a time, so a full-size check fits on a GPU.
    """
    b, h, n, d = q.shape
    t = num_dense_tokens
    nv = n - t
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if query_index is None:
        query_index = torch.arange(n, device=q.device)
    keys = torch.cat([kp.reshape(b, h, nv, d), k[:, :, nv:]], dim=2).reshape(b * h, n, d)
    vals = torch.cat([vp.reshape(b, h, nv, d), v[:, :, nv:]], dim=2).reshape(b * h, n, d)
    chunk = query_index.numel() if query_chunk is None else query_chunk
    outs = []
    for start in range(0, query_index.numel(), chunk):
        rows = query_index[start:start + chunk]
        mask = sparse_attention_mask(
            q_perm, q_offsets, k_offsets, sel_idx, sel_count,
            num_dense_tokens=t, key_padding_mask=key_padding_mask, heads=h, query_index=rows,
        )
        qs = q[:, :, rows].reshape(b * h, rows.numel(), d)
        outs.append(masked_attention(qs, keys, vals, mask, scale))
    return torch.cat(outs, dim=1).reshape(b, h, query_index.numel(), d)
