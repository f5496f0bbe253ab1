"""What the GPU probes share: their command line (--out DIR, --no-selection), their results (one JSON file and one
markdown table named after the probe and the card, ``<stem>_h100.json`` / ``.md``), the k-means problems of the
benchmark models, and the A/B timing of the whole selection with a library setting off and on."""

from __future__ import annotations

import argparse
import contextlib
import json
import os

import torch

# the k-means problems of the benchmark models: name -> (heads, tokens, clusters); Q / K the query / key clustering
KMEANS_SHAPES = {
    "wan1.3b-480p Q 100": (12, 32760, 100),
    "wan1.3b-480p Q 300": (12, 32760, 300),
    "wan1.3b-480p K 500": (12, 32760, 500),
    "wan1.3b-480p K 1000": (12, 32760, 1000),
    "wan14b-720p Q 300": (40, 75600, 300),
    "wan14b-720p K 1000": (40, 75600, 1000),
    "hunyuan-720p K 1000": (24, 118800, 1000),
}


def kmeans_shapes(*names: str) -> tuple[tuple[str, int, int, int], ...]:
    """(name, heads, tokens, clusters) of the named KMEANS_SHAPES (all of them when none is named)."""
    return tuple((n, *KMEANS_SHAPES[n]) for n in (names or KMEANS_SHAPES))


# whole-selection shapes of the A/B runs: name, heads, video tokens, text tokens, Cq, Ck
SELECTION_SHAPES = (("wan1.3b-480p", 12, 32760, 0, 100, 500), ("wan1.3b-480p", 12, 32760, 0, 300, 1000),
                    ("wan14b-720p", 40, 75600, 0, 300, 1000))


def kmeans_problem(h: int, n: int, c: int, dev, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Random bf16 points ``(1, h, n, 128)`` and fp32 centroids ``(h, c, 128)`` taken from evenly strided points."""
    torch.manual_seed(seed)
    x = torch.randn(1, h, n, 128, device=dev, dtype=torch.bfloat16)
    return x, x[:, :, :: n // c][:, :, :c].float().reshape(h, c, 128).contiguous() + 0.01


def cluster_problem(h: int, nv: int, cq: int, ck: int, dev, seed: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
    """Random fp32 query and key centroids ``(h, cq, 128)`` / ``(h, ck, 128)`` and key-cluster sizes ``(h, ck)``
    int32 that split ``nv`` tokens evenly (the scoring and selection's inputs)."""
    torch.manual_seed(seed)
    qc = torch.randn(h, cq, 128, device=dev) * 0.5
    kc = torch.randn(h, ck, 128, device=dev) * 0.5
    sizes = torch.full((h, ck), nv // ck, dtype=torch.int32, device=dev)
    sizes[:, 0] += nv - sizes[0].sum()
    return qc, kc, sizes


def label_agreement(x: torch.Tensor, cent: torch.Tensor, ref: torch.Tensor, got: torch.Tensor) -> dict:
    """How two assigns' labels ``(h, n)`` agree: the share equal, whether ``got``'s are valid ids, over two heads
    the largest fp32 distance gap between the two choices against the mean distance (near-ties may flip), and
    ``agrees``, whether that is the same argmin but for near-ties."""
    c = cent.shape[1]
    valid = bool(((got >= 0) & (got < c)).all().item())
    d = torch.cdist(x[0, :2].float(), cent[:2]) ** 2
    gap = (torch.gather(d, 2, got[:2, :, None].long().clamp(0, c - 1)) - torch.gather(d, 2, ref[:2, :, None].long()))
    out = {"labels_equal": (ref == got).float().mean().item(), "labels_valid": valid,
           "max_gap": gap.abs().max().item(), "mean_dist": d.mean().item()}
    # the same argmin up to near-ties: valid ids, over 99% equal, no disagreement farther than 1% of the mean distance
    out["agrees"] = valid and out["labels_equal"] > 0.99 and out["max_gap"] <= 1e-2 * out["mean_dist"]
    return out


@contextlib.contextmanager
def setting(obj, name: str, value):
    """``obj.name = value`` for the duration (a module-level knob of the library), then the value it had."""
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


@contextlib.contextmanager
def settings(*triples):
    """:func:`setting` of every ``(obj, name, value)`` for the duration."""
    with contextlib.ExitStack() as stack:
        for obj, name, value in triples:
            stack.enter_context(setting(obj, name, value))
        yield


def alternating_times(fns: dict, rounds: int = 3) -> dict:
    """Each of ``fns`` (key -> a function to time, e.g. a captured graph's replay) timed ``rounds`` times with
    bench_selection.bench_ms, in alternating order (as given, then reversed, ...), so that no variant always runs
    first after the others warmed or heated the card: key -> the rounds' milliseconds."""
    import bench_selection as S

    keys = list(fns)
    times: dict = {k: [] for k in keys}
    for rnd in range(rounds):
        for k in (keys if rnd % 2 == 0 else keys[::-1]):
            times[k].append(S.bench_ms(fns[k]))
    return times


def captured_selections(q, k, v, cfg, variants: dict) -> dict:
    """The whole selection (``cluster_and_select``, 2 warm iterations) captured in a CUDA graph per variant, each
    into its own workspace from its own ``bench_selection.warm_centroids`` (the same warm start for every variant).
    ``variants``: label -> (``cluster_and_select``'s keyword arguments, :func:`settings` triples in force while it is
    captured); the keyword arguments may also give the variant its own ``config`` and ``iters`` (default: ``cfg``,
    2). Returns label -> ``(graph, workspace, q_cent, k_cent, (q_cent, k_cent) at the warm start)``; keep it
    referenced while the graphs replay: they write into its tensors."""
    import bench_selection as S

    from svg2core import Workspace
    from svg2core.attention import cluster_and_select

    out = {}
    for label, (kwargs, knobs) in variants.items():
        kwargs = dict(kwargs)
        vcfg, iters = kwargs.pop("config", cfg), kwargs.pop("iters", 2)
        ws = Workspace()
        q_cent, k_cent = S.warm_centroids(q, k, cfg.num_q_clusters, cfg.num_k_clusters, ws)
        start = (q_cent.clone(), k_cent.clone())
        with settings(*knobs):
            graph = S.capture_graph(lambda ws=ws, qc=q_cent, kc=k_cent, kw=kwargs, c=vcfg, it=iters:
                                    cluster_and_select(q, k, v, qc, kc, it, c, ws, **kw))
        out[label] = (graph, ws, q_cent, k_cent, start)
    return out


def run_shapes(out: ProbeResults, key: str, case, shapes, dev) -> None:
    """``out.data[key]`` gets ``case(*shape, dev)`` of every shape, saved after each."""
    for shape in shapes:
        out.data[key].append(case(*shape, dev))
        out.save()
        torch.cuda.empty_cache()


def time_selection_ab(out: ProbeResults, switch, dev, shapes=SELECTION_SHAPES) -> None:
    """The whole selection (bench_selection.time_shape, CUDA-graph replay) of every shape, with ``switch(False)`` and
    then ``switch(True)`` in force (a context manager each), into ``out.data["selection"]``."""
    import bench_selection as S

    for name, h, nv, t, cq, ck in shapes:
        for on in (False, True):
            with switch(on):
                r = S.time_shape(name, h, nv, t, cq, ck, dev, legacy=False, stages=False)
            r["variant_on"] = on
            out.data["selection"].append(r)
            out.save()
            print(json.dumps(r), flush=True)
            torch.cuda.empty_cache()


def card_tag(device_name: str) -> str:
    """Short name of the card for result files: h100, h200, else the device name in lower case."""
    if "H200" in device_name:
        return "h200"
    if "H100" in device_name:
        return "h100"
    return device_name.replace(" ", "_").lower()


def probe_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="directory for the JSON and markdown results")
    ap.add_argument("--no-selection", action="store_true", help="skip the whole-selection timings")
    return ap.parse_args()


class ProbeResults:
    """``data`` (a dict, saved as JSON after every stage so that a failure keeps what was measured) and the
    markdown table written at the end, in ``out`` as ``<stem>_<card>``."""

    def __init__(self, out: str, stem: str, **fields) -> None:
        os.makedirs(out, exist_ok=True)
        self.device = torch.cuda.get_device_name()
        self.data = {"device": self.device, **fields}
        self.path = os.path.join(out, f"{stem}_{card_tag(self.device)}")

    def save(self) -> None:
        with open(self.path + ".json", "w") as f:
            json.dump(self.data, f, indent=1)

    def finish(self, lines: list[str]) -> None:
        self.save()
        with open(self.path + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))


def selection_ab_lines(rows: list[dict], off: str, on: str) -> list[str]:
    """Markdown table of whole-selection timings (bench_selection.time_shape rows) measured in pairs, a variant off
    then on: ``rows[0::2]`` off, ``rows[1::2]`` on, the percentages of the first row's dense time."""
    lines = ["", "Selection (2 warm iterations on Q and K + scoring + selection + K/V gather, CUDA-graph replay):", "",
             f"| shape | Cq/Ck | dense ms | {off} ms | % | {on} ms | % |", "|---|---|---|---|---|---|---|"]
    for a, b in zip(rows[::2], rows[1::2], strict=True):
        dense = a["dense_sdpa_cudnn_ms"]
        lines.append(f"| {a['shape']} | {a['Cq']}/{a['Ck']} | {dense:.1f} | {a['selection_graph_ms']:.3f} | "
                     f"{100 * a['selection_graph_ms'] / dense:.1f}% | {b['selection_graph_ms']:.3f} | "
                     f"{100 * b['selection_graph_ms'] / dense:.1f}% |")
    return lines
