"""Do the token layout and the data of q / k / v change the selection's cost? diffusers hands the attention
processors ``(B, N, H, D)`` tensors, which svg2 receives as ``(B, H, N, D)`` views (token stride H * D);
bench_selection times contiguous ``(B, H, N, D)`` tensors of i.i.d. normal values, whose k-means labels are
scattered. Video tokens are not: neighbouring tokens tend to share a cluster ("runs": runs of 64 consecutive
tokens near one of C random centres, plus noise). This probe times the whole selection (CUDA-graph replay and
eager) and its key-side stages on each layout and data, in one run.

    python bench/probes/probe_layout.py --out DIR
"""

from __future__ import annotations

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import bench_selection as S  # noqa: E402
import probe_io as P  # noqa: E402
from gpu_clocks import GpuClocks, clock_cell  # noqa: E402

import svg2core.ops.kmeans.kmeans as km  # noqa: E402
from svg2core import SVG2Config  # noqa: E402
from svg2core.attention import cluster_and_select  # noqa: E402
from svg2core.ops.kmeans import kmeans_assign, kmeans_update  # noqa: E402
from svg2core.ops.permute import gather_kv, sort_by_cluster  # noqa: E402
from svg2core.ops.select import select_key_clusters  # noqa: E402
from svg2core.state import Workspace  # noqa: E402

SHAPES = (("wan1.3b-480p", 12, 32760, 100, 500), ("wan14b-720p", 40, 75600, 300, 1000),
          ("hunyuan-720p", 24, 118800, 400, 1000))


def make_data(h, nv, d, layout, data, dev, gen) -> torch.Tensor:
    x = torch.randn(1, nv, h, d, device=dev, generator=gen)  # (B, N, H, D)
    if data in ("runs", "skewed"):  # runs of 64 consecutive tokens near one of 512 centres
        centres = 3.0 * torch.randn(512, h, d, device=dev, generator=gen)
        pick = torch.randint(0, 512, (nv // 64 + 1,), device=dev, generator=gen).repeat_interleave(64)[:nv]
        x = x + centres[pick][None]
    if data == "skewed":  # and 40% of the tokens in one tight "background" cluster
        bg = torch.rand(nv, device=dev, generator=gen) < 0.4
        x[:, bg] = 5.0 + 0.2 * torch.randn(1, int(bg.sum()), h, d, device=dev, generator=gen)
    x = x.to(torch.bfloat16)
    # bnhd: what a diffusers processor passes, (B, N, H, D) storage seen as (B, H, N, D)
    return x.transpose(1, 2).contiguous() if layout == "bhnd" else x.transpose(1, 2)


def time_layout(name, h, nv, cq, ck, layout, dev, data="randn") -> dict:
    d = 128
    gen = torch.Generator(device=dev).manual_seed(3)
    q, k, v = (make_data(h, nv, d, layout, data, dev, gen) for _ in range(3))
    cfg = SVG2Config(num_q_clusters=cq, num_k_clusters=ck)
    ws = Workspace()
    q_cent, k_cent = S.warm_centroids(q, k, cq, ck, ws)

    def selection():
        cluster_and_select(q, k, v, q_cent, k_cent, 2, cfg, ws)

    with GpuClocks(dev) as clocks:  # the clock the selection ran at (a pipeline step runs it under sustained load)
        graph = S.graph_ms(selection)
    res = {"shape": name, "layout": layout, "data": data, "heads": h, "video_tokens": nv, "Cq": cq, "Ck": ck,
           "selection_graph_ms": graph, "selection_ms": S.bench_ms(selection), "gpu_clocks": clocks.summary()}
    lab = ws.buffer("k.labels", (h, nv), torch.int32, dev)
    tile = km.ASSIGN_TILE
    counts = ws.buffer("k.block_counts", (h, -(-nv // tile.block_n) * ck), torch.int32, dev)
    res["assign_k_ms"] = S.graph_ms(lambda: kmeans_assign(k, k_cent, lab, workspace=ws, block_counts=counts))
    perm, off = sort_by_cluster(lab, ck, ws, "k")
    res["update_k_ms"] = S.graph_ms(lambda: kmeans_update(k, perm, off, k_cent, lab, workspace=ws, name="k"))
    res["gather_kv_ms"] = S.graph_ms(lambda: gather_kv(k, v, perm, ws))
    res["sort_k_ms"] = S.graph_ms(lambda: sort_by_cluster(lab, ck, ws, "k", method="count", count_block=tile.block_n,
                                                          block_counts=counts))
    # the query chain's stages, the selection, and how uneven the clusters are (the update runs one program per
    # cluster, so its time follows the largest)
    qlab = ws.buffer("q.labels", (h, nv), torch.int32, dev)
    qcounts = ws.buffer("q.block_counts", (h, -(-nv // tile.block_n) * cq), torch.int32, dev)
    res["assign_q_ms"] = S.graph_ms(lambda: kmeans_assign(q, q_cent, qlab, workspace=ws, block_counts=qcounts))
    qperm, qoff = sort_by_cluster(qlab, cq, ws, "q")
    res["update_q_ms"] = S.graph_ms(lambda: kmeans_update(q, qperm, qoff, q_cent, qlab, workspace=ws, name="q"))
    k_sizes = (off[:, 1:] - off[:, :-1]).contiguous()
    res["select_ms"] = S.graph_ms(lambda: select_key_clusters(q_cent, k_cent, k_sizes, cfg, nv, ws))
    # the update in one program per cluster (kmeans.UPDATE_CHUNK = 0, the default until session 9) against the
    # default's pieces: in one program per cluster the largest cluster alone sets the update's time
    # and twice the default's cut spacing: fewer clusters straddle a cut (the ticket path), longer pieces
    res["update_chunk"] = km.UPDATE_CHUNK
    for tag, chunk in (("parts1", 0), ("chunk2x", 2 * km.UPDATE_CHUNK)):
        with P.setting(km, "UPDATE_CHUNK", chunk):
            res[f"update_k_{tag}_ms"] = S.graph_ms(lambda: kmeans_update(k, perm, off, k_cent, lab, workspace=ws,
                                                                         name="k"))
            res[f"update_q_{tag}_ms"] = S.graph_ms(lambda: kmeans_update(q, qperm, qoff, q_cent, qlab, workspace=ws,
                                                                         name="q"))
            res[f"selection_{tag}_graph_ms"] = S.graph_ms(selection)
    for tag, o in (("q", qoff), ("k", off)):
        sz = (o[:, 1:] - o[:, :-1]).float()
        res[f"{tag}_largest_over_mean"] = float((sz.max(1).values / sz.mean(1)).mean())
    return res


def main() -> None:
    args = P.probe_args()
    dev = torch.device("cuda")
    out = P.ProbeResults(args.out, "probe_layout", rows=[])
    for name, h, nv, cq, ck in SHAPES:
        for layout, data in (("bhnd", "randn"), ("bnhd", "randn"), ("bhnd", "runs"), ("bhnd", "skewed")):
            out.data["rows"].append(time_layout(name, h, nv, cq, ck, layout, dev, data))
            out.save()
            print(out.data["rows"][-1], flush=True)
            torch.cuda.empty_cache()
    lines = [f"# Selection cost by token layout ({out.device})", "",
             "bhnd: contiguous (B, H, N, D); bnhd: (B, N, H, D) storage as a (B, H, N, D) view (what diffusers "
             "processors pass). ms, CUDA-graph replay unless marked eager. The update sums clusters in pieces "
             f"between cuts every {km.UPDATE_CHUNK} sorted tokens (kmeans.UPDATE_CHUNK) except in the \"1 part\" columns "
             "(one program per cluster).", "",
             "| shape | layout | data | selection | selection eager | assign K | sort K | update K | gather K/V | "
             "assign Q | update Q | select | largest cluster / mean (Q, K) | update K, Q in 1 part | selection, "
             f"update in 1 part | update K, Q, cuts every {2 * km.UPDATE_CHUNK} | selection, cuts every "
             f"{2 * km.UPDATE_CHUNK} | SM clock during the selection's replays (mean / min MHz) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out.data["rows"]:
        lines.append(f"| {r['shape']} | {r['layout']} | {r['data']} | {r['selection_graph_ms']:.3f} | {r['selection_ms']:.3f} | "
                     f"{r['assign_k_ms']:.3f} | {r['sort_k_ms']:.3f} | {r['update_k_ms']:.3f} | {r['gather_kv_ms']:.3f} | "
                     f"{r['assign_q_ms']:.3f} | {r['update_q_ms']:.3f} | {r['select_ms']:.3f} | "
                     f"{r['q_largest_over_mean']:.1f}, {r['k_largest_over_mean']:.1f} | "
                     f"{r['update_k_parts1_ms']:.3f}, {r['update_q_parts1_ms']:.3f} | {r['selection_parts1_graph_ms']:.3f} | "
                     f"{r['update_k_chunk2x_ms']:.3f}, {r['update_q_chunk2x_ms']:.3f} | "
                     f"{r['selection_chunk2x_graph_ms']:.3f} | {clock_cell(r.get('gpu_clocks'))} |")
    out.finish(lines)


if __name__ == "__main__":
    main()
