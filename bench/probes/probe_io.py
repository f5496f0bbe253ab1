"""What the GPU probes share: their command line (--out DIR, --no-selection) and their results, one JSON file and
one markdown table named after the probe and the card (``<stem>_h100.json`` / ``.md``)."""

from __future__ import annotations

import argparse
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
