"""Shared fixtures of the svg2core tests: Triton kernels run under the interpreter on CPU.

Triton 3.6's interpreter multiplies bfloat16 ``tl.dot`` operands as their raw uint16 storage (it
keeps bf16 as uint16 for numpy), which makes every bf16 dot meaningless on CPU. The patch below
upcasts bf16 operands to fp32 before the interpreter's matmul (what the GPU's tensor cores compute:
exact bf16 products, fp32 accumulation); the kernels themselves are unchanged.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _patch_interpreter_bf16_dot() -> None:
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter as ti
    except ImportError:  # no triton: kernel tests skip themselves
        return
    builder = ti.InterpreterBuilder
    if getattr(builder, "_svg2_bf16_dot_patched", False):
        return
    original = builder.create_dot

    def upcast(h):
        if h.dtype.scalar == tl.bfloat16:
            return ti.TensorHandle(ti._convert_float(h.data, tl.bfloat16, tl.float32, None).view(np.float32),
                                   tl.float32)
        return h

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, upcast(a), upcast(b), d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot
    builder._svg2_bf16_dot_patched = True


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_interpreter_bf16_dot()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def compiler_env(tmp_path) -> dict:
    """The environment of a compile probe's subprocess (bench/probes/compile_*.py): outside the interpreter, with a
    Triton cache of its own."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    return env


def pytest_configure(config) -> None:
    # Triton 3.6's interpreter converts 1-element arrays to scalars (deprecated in numpy >= 1.25).
    config.addinivalue_line("filterwarnings", "ignore:Conversion of an array with ndim:DeprecationWarning")
    # log(0) = -inf is intended (empty key clusters get probability 0)
    config.addinivalue_line("filterwarnings", "ignore:divide by zero encountered in log:RuntimeWarning")
