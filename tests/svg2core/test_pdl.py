"""Programmatic dependent launch of the selection kernels (svg2core.ops.pdl): off the GPU it changes nothing, and a
kernel compiled with it for sm_90 waits for its predecessor before its first global memory access. That a whole call
gives the same result with it: tests/svg2core/test_sparse_attn_hopper.py (GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from svg2core.ops import pdl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pdl_on():
    saved = pdl.ENABLED
    pdl.ENABLED = True
    yield
    pdl.ENABLED = saved


def test_no_launch_options_off_the_gpu_or_when_disabled(pdl_on):
    assert pdl.launch_options(torch.zeros(1)) == {}
    pdl.ENABLED = False
    assert pdl.launch_options(torch.zeros(1)) == {}


def test_sm90_compile_waits_before_the_first_global_access(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    out = tmp_path / "pdl.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "probes" / "compile_pdl.py"), "--json", str(out)],
                   check=True, capture_output=True, env=env, timeout=300, cwd=ROOT)
    off, on = json.loads(out.read_text())
    assert not off["launch_pdl"] and off["wait_line"] == -1 and off["launch_dependents_line"] == -1
    assert on["launch_pdl"]
    assert 0 <= on["wait_line"] < on["launch_dependents_line"]
    assert on["wait_line"] < on["first_global_load_line"] and on["wait_line"] < on["first_global_store_line"]
