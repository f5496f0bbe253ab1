"""The warp-specialised Gluon kernel (svg2core/ops/sparse_attn/gluon_kernel.py), Hopper's default.

Gluon has no interpreter, so its numerics are checked on a GPU only (bench/probes/probe_gluon.py and
bench/bench_sparse_attn.py check it against the fp32 reference before timing). Here: the config rules,
the Hopper-only guard, the per-architecture choice, and that it compiles for sm_90 without a GPU
(Triton's own ptxas, in a subprocess without TRITON_INTERPRET) into the structure it is written for
(wgmma, cp.async tracked by mbarriers, register reallocation between the partitions).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from svg2core.ops.sparse_attn import KernelConfig, default_config, sparse_attention
from svg2core.ops.sparse_attn import gluon_kernel as G

ROOT = Path(__file__).resolve().parents[2]


def test_config_rules():
    with pytest.raises(ValueError, match="block_m must be 128"):
        KernelConfig(block_m=64, impl="gluon")
    with pytest.raises(ValueError, match="impl: must be 'triton' or 'gluon'"):
        KernelConfig(impl="cuda")
    with pytest.raises(ValueError, match="gluon_tile_tables: must be 'on' or 'off'"):
        KernelConfig(gluon_tile_tables=True)
    with pytest.raises(ValueError, match="gluon_persistent: not available with gluon_pingpong"):
        KernelConfig(gluon_persistent=True, gluon_pingpong=True)
    assert KernelConfig(block_m=128, block_n=128, impl="gluon").impl == "gluon"


def test_gluon_is_the_hopper_default_for_head_dim_128_only(monkeypatch):
    from svg2core.ops.sparse_attn import wrapper

    monkeypatch.setattr(wrapper.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cuda = torch.device("cuda")
    assert default_config(cuda, torch.bfloat16, 128).impl == "gluon"
    assert default_config(cuda, torch.bfloat16, 64).impl == "triton"
    monkeypatch.setattr(wrapper.torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert default_config(cuda, torch.bfloat16, 128).impl == "triton"
    assert default_config(torch.device("cpu"), torch.bfloat16, 128).impl == "triton"


def test_gluon_impl_refuses_a_non_hopper_device():
    q = torch.randn(1, 1, 8, 64, dtype=torch.bfloat16)
    kp = q[0].clone()
    ints = dict(q_perm=torch.arange(8, dtype=torch.int32)[None], q_offsets=torch.tensor([[0, 8]], dtype=torch.int32),
                k_offsets=torch.tensor([[0, 8]], dtype=torch.int32), sel_idx=torch.zeros(1, 1, 1, dtype=torch.int32),
                sel_count=torch.ones(1, 1, dtype=torch.int32), sel_cum=torch.tensor([[[0, 8]]], dtype=torch.int32))
    cfg = KernelConfig(block_m=128, block_n=128, impl="gluon")
    with pytest.raises(ValueError, match="needs a Hopper GPU"):
        sparse_attention(q, q, q, kp, kp, **ints, config=cfg)


def _compile_report(tmp_path, env: dict, *flags: str) -> dict:
    """bench/probes/compile_sm90.py's report of an sm_90 compile with ``flags`` (``env``: the ``compiler_env``
    fixture, outside the interpreter)."""
    out = tmp_path / "report.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "probes" / "compile_sm90.py"), *flags, "--json", str(out)],
                   check=True, capture_output=True, env=env, timeout=300, cwd=ROOT)
    return json.loads(out.read_text())


@pytest.mark.parametrize("head_dim,flags", [(128, []), (64, []), (128, ["--tile-tables"]),
                                            (128, ["--tile-tables", "--persistent"])])
def test_compiles_for_sm90_with_the_intended_structure(head_dim, flags, tmp_path, compiler_env):
    r = _compile_report(tmp_path, compiler_env, "--head-dim", str(head_dim), *flags)
    assert r["regs"] <= G._MAXNREG  # 12 warps x 32 threads x 168 registers fit one SM
    assert r["shared"] <= 227 * 1024
    assert r[r"wgmma\.mma_async"] > 0 and r[r"cp\.async\.mbarrier\.arrive"] > 0
    # the second consumer warpgroup gets CONSUMER_REGS, the producer PRODUCER_REGS (setmaxnreg)
    assert ["inc", str(G._CONSUMER_REGS)] in r["setmaxnreg"]
    assert ["dec", str(G._PRODUCER_REGS)] in r["setmaxnreg"]
    # no shared-memory atomics (histograms) in the partitions: Triton 3.6 places their scratch over the
    # partitions' argument buffer (gluon_kernel.py)
    assert r["atom_shared"] == 0


def test_padding_mask_flag_is_never_specialised():
    # a call with a key padding mask passes HAS_KPM_I = 1, which the JIT would otherwise compile as a constant:
    # in Triton 3.6 with 3 stages ptxas then spilled 85 registers instead of 5 (12 instead of 3 with the key-tile
    # tables), and the HunyuanVideo call ran 12% slower (gluon_kernel.py, NOTES_sparse_attn.md v11)
    assert [p.name for p in G.sparse_attn_fwd_gluon.params if p.do_not_specialize] == ["HAS_KPM_I"]


def test_pinned_pv_wait_follows_every_exponential(tmp_path, compiler_env):
    # gluon_pin_wait's mechanism rests on ptxas keeping a wgmma wait after an earlier shared-memory store:
    # check it in the SASS, so a compiler update that breaks it shows here rather than only as lost time
    steps = _compile_report(tmp_path, compiler_env, "--stages", "3", "--pin-wait")["pv_wait"]
    assert len(steps) >= 2  # a full-tile and a masked step per consumer warpgroup at least
    for step in steps:
        assert step["ex2_before_wait"] >= 64 and step["ex2_after_wait"] == 0, steps
