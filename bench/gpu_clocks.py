"""The GPU's SM clock and power while a benchmark runs: ``nvidia-smi`` polling every 100 ms in a child process.

    with GpuClocks(device) as c:
        ... timed work ...
    c.summary()   # {"sm_mhz_mean": ..., "sm_mhz_min": ..., "power_w_mean": ..., "samples": n} or None

A kernel's time in a long run (a pipeline step: GEMMs and attention back to back) and in a short, isolated one
(a probe replaying one stage) can differ by how far the card lowers its clock under sustained power. Recording the
clock beside each timing shows whether two numbers were taken at the same clock. Without nvidia-smi (or on the CPU)
the summary is None and nothing else changes.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess

import torch


class GpuClocks:
    def __init__(self, device: torch.device, interval_ms: int = 100):
        self.device = device
        self.interval_ms = interval_ms
        self._proc: subprocess.Popen | None = None
        self._out = ""

    def __enter__(self) -> GpuClocks:
        exe = shutil.which("nvidia-smi")
        if exe is None or self.device.type != "cuda":
            return self
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self._proc = subprocess.Popen(
            [exe, "-i", str(index), "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
             f"-lms={self.interval_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._out, _ = self._proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._out, _ = self._proc.communicate()

    def summary(self) -> dict | None:
        return parse_samples(self._out)


def parse_samples(text: str) -> dict | None:
    """Mean / min SM clock (MHz) and mean power (W) of nvidia-smi's ``clocks.sm, power.draw`` CSV lines; lines that
    do not parse (a reading of "[N/A]", a line cut off at termination) are skipped. None without a sample."""
    sm, power = [], []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            continue
        try:
            clock, watts = float(parts[0]), float(parts[1])
        except ValueError:
            continue
        sm.append(clock)
        power.append(watts)
    if not sm:
        return None
    return {"sm_mhz_mean": round(statistics.fmean(sm), 1), "sm_mhz_min": min(sm),
            "power_w_mean": round(statistics.fmean(power), 1), "samples": len(sm)}


def clock_cell(c: dict | None) -> str:
    """A summary as a table cell: "mean / min" MHz, or "-" without samples."""
    return f"{c['sm_mhz_mean']:.0f} / {c['sm_mhz_min']:.0f}" if c else "-"
