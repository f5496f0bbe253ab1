"""What the graph break around svg2's routed attention costs the host in a compiled block (CPU, host-bound).

    python bench/probes/probe_graph_break.py --out DIR [--calls 2000] [--rounds 3]

The svg2 processors call the router's ``attend`` under ``torch.compiler.disable``, so a compiled transformer block
splits into two graphs around it (docs/integration.md, Compatibility): the routing decision reads the job's Python
state at run time. A ``torch.library.custom_op`` would keep the block one graph (its Python body runs at run time
too) but pays the op's dispatch. This times a small block (norm, QKV projection, the attention stand-in, output
projection, feed-forward; 16 tokens x 32 channels, one CPU thread, inference mode, inductor) with the stand-in
(1) behind ``torch.compiler.disable``, (2) as a custom op, (3) inlined (no routing: the floor), best of the alternating
rounds, microseconds per block forward. At this size the host's time is all there is, so the differences are what
each arrangement adds per routed layer. Writes ``DIR/probe_graph_break_cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

STATE = {"calls": 0}  # the stand-in reads and writes Python state at run time, as the router does


def _attention_stand_in(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    STATE["calls"] += 1
    return q * 1.0


@torch.compiler.disable
def _behind_disable(q, k, v):
    return _attention_stand_in(q, k, v)


@torch.library.custom_op("svg2_probe::attend", mutates_args=())
def _as_custom_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _attention_stand_in(q, k, v)


@_as_custom_op.register_fake
def _(q, k, v):
    return torch.empty_like(q)


def _inline(q, k, v):
    return q * 1.0


VARIANTS = {"graph break (compiler.disable)": _behind_disable, "custom op": _as_custom_op, "inline (floor)": _inline}


class Block(torch.nn.Module):
    def __init__(self, d: int, attend) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.o = torch.nn.Linear(d, d)
        self.ff = torch.nn.Linear(d, d)
        self.attend = attend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, -1)
        x = x + self.o(self.attend(q.relu(), k.sigmoid(), v.tanh()))
        return x + self.ff(self.norm(x)).relu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(1, 16, 32)
    blocks, times = {}, {name: [] for name in VARIANTS}
    with torch.inference_mode():
        for name, attend in VARIANTS.items():
            torch.manual_seed(0)
            blocks[name] = torch.compile(Block(32, attend))
            for _ in range(5):  # compile and warm
                out = blocks[name](x)
            torch.testing.assert_close(out, blocks[name]._orig_mod(x))  # compiled == eager
        order = list(VARIANTS)
        for r in range(a.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                blk = blocks[name]
                t = time.perf_counter()
                for _ in range(a.calls):
                    blk(x)
                times[name].append((time.perf_counter() - t) / a.calls * 1e6)
    best = {name: min(v) for name, v in times.items()}
    floor = best["inline (floor)"]
    res = {"torch": torch.__version__, "calls": a.calls, "rounds": a.rounds, "us_per_block": best, "rounds_us": times}
    lines = ["# The graph break around the routed attention: host time per compiled block forward (CPU)", "",
             f"torch {torch.__version__}, inductor, one thread, inference mode, 16 tokens x 32 channels; best of "
             f"{a.rounds} alternating rounds of {a.calls} forwards.", "",
             "| attention call | us per block | over the floor |", "|---|---|---|"]
    lines += [f"| {name} | {us:.1f} | {us - floor:+.1f} |" for name, us in best.items()]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "probe_graph_break_cpu.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(a.out, "probe_graph_break_cpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
