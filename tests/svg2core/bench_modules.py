"""The bench/ scripts and probes as modules, for the tests of what they compute."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_bench(relpath: str) -> ModuleType:
    """``bench/<relpath>`` loaded by path (a fresh module each call), with ``bench/`` and ``bench/probes/`` on
    ``sys.path`` while it runs its imports (the probes import the benchmarks and each other by name)."""
    path = ROOT / "bench" / relpath
    dirs = [str(ROOT / "bench"), str(ROOT / "bench" / "probes")]
    sys.path[:0] = dirs
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for d in dirs:
            sys.path.remove(d)
