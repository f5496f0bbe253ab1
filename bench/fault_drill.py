"""Fault drill: one live stack of real processes (bench/stack.py: Redis with an append-only file,
the API, tiny-model workers), the faults of docs/hardening.md in sequence, and a table of what
happened to the jobs of each: submitted, completed, failed with a clear code, lost (must be 0).

    python bench/fault_drill.py        # prints the table; writes docs/benchmarks/fault_drill.{json,md}

Timings: heartbeat every 0.25 s with a 2 s TTL and an API maintenance pass every 0.5 s (the
defaults are 5 s / 30 s / 10 s: a lost worker's job is recovered within 40 s by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.stack import REPO_ROOT, LiveStack  # noqa: E402
from worker.store import JobStore  # noqa: E402

SLOW = {"size": "128x128", "num_frames": 17, "num_inference_steps": 20}
CLEAR_CODES = {"worker_lost", "worker_shutdown", "invalid_input", "out_of_memory", "internal", "timeout",
               "output_unwritable"}


def wait_running(stack: LiveStack, job_id: str, timeout_s: float = 60) -> str:
    """Wait until the job is mid-run; returns the name of the worker running it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        video = stack.get(job_id)
        if video["status"] == "in_progress" and video["progress"] > 0:
            for proc in stack.workers:
                beat = stack.heartbeat(proc) if proc.alive() else None
                if beat and beat.get("current_job") == job_id:
                    return proc.name
        time.sleep(0.05)
    raise TimeoutError(f"{job_id} never ran")


def proc_named(stack: LiveStack, name: str):
    return next(p for p in stack.workers if p.name == name)


def drill_worker_sigkill(stack: LiveStack) -> tuple[list[str], str]:
    ids = stack.submit(1, **SLOW) + stack.submit(3)
    victim = wait_running(stack, ids[0])
    t0 = time.monotonic()
    stack.kill_worker(proc_named(stack, victim))
    # recovered: another worker runs it (or it already finished)
    while wait_owner(stack, ids[0]) in (None, victim) and stack.get(ids[0])["status"] not in ("completed", "failed"):
        if time.monotonic() - t0 > 60:
            break
        time.sleep(0.05)
    recovered = time.monotonic() - t0
    stack.start_worker(wait=False)  # replace the dead one
    return ids, f"running job picked up by another worker {recovered:.1f} s after SIGKILL (TTL 2 s + sweep 0.5 s)"


def wait_owner(stack: LiveStack, job_id: str) -> str | None:
    for proc in stack.workers:
        beat = stack.heartbeat(proc) if proc.alive() else None
        if beat and beat.get("current_job") == job_id:
            return proc.name
    return None


def drill_worker_sigkill_last_attempt(stack: LiveStack) -> tuple[list[str], str]:
    """A job killed on every attempt ends failed (worker_lost) after SVG2_MAX_ATTEMPTS."""
    ids = stack.submit(1, **SLOW)
    for _ in range(3):
        victim = wait_running(stack, ids[0], 90)
        stack.start_worker(wait=False)
        stack.kill_worker(proc_named(stack, victim))
    return ids, "killed on each of its 3 attempts"


def drill_redis_restart(stack: LiveStack) -> tuple[list[str], str]:
    ids = stack.submit(1, **SLOW) + stack.submit(3)
    wait_running(stack, ids[0])
    stack.stop_redis(kill=True)
    t0 = time.monotonic()
    resp = httpx.get(f"{stack.base_url}/v1/videos/{ids[1]}", timeout=30)
    answer = f"{resp.status_code} {resp.json()['error']['code']} in {time.monotonic() - t0:.2f} s"
    time.sleep(2)
    stack.start_redis()
    t1 = time.monotonic()
    stack.wait_http(f"{stack.base_url}/readyz", 60)
    return ids, f"Redis SIGKILLed for 2 s; API answered {answer}; ready again {time.monotonic() - t1:.1f} s after restart"


def drill_api_restart(stack: LiveStack) -> tuple[list[str], str]:
    ids = stack.submit(1, **SLOW) + stack.submit(3)
    wait_running(stack, ids[0])
    stack.stop_api()
    time.sleep(1)
    stack.start_api()
    return ids, "API stopped and restarted while a job ran and 3 waited"


def drill_bad_job(stack: LiveStack) -> tuple[list[str], str]:
    """A job whose spec the pipeline refuses (injected past the API's validation) fails invalid_input;
    the worker stays up and runs the next ones."""
    store = JobStore(stack.client(), stack.output_dir)
    good = stack.submit(1)
    spec = store.get(good[0]).spec.model_copy(update={"num_frames": 6})
    bad = store.create(spec, "tiny").id
    return [*good, bad, *stack.submit(2)], "a job the pipeline cannot run (num_frames 6) between good ones"


def drill_output_unwritable(stack: LiveStack) -> tuple[list[str], str]:
    out = stack.output_dir
    moved = out.with_name("outputs.moved")
    os.rename(out, moved)
    out.write_bytes(b"")  # a file where the directory was: every write fails
    ids = stack.submit(2)
    stack.wait_final(ids, 60)
    out.unlink()
    os.rename(moved, out)
    ids += stack.submit(1)
    return ids, "output directory replaced by a file for 2 jobs, then restored for a third"


def drill_sigterm(stack: LiveStack) -> tuple[list[str], str]:
    ids = stack.submit(1, **SLOW)
    victim = proc_named(stack, wait_running(stack, ids[0]))
    t0 = time.monotonic()
    code = stack.term_worker(victim, timeout_s=60)
    took = time.monotonic() - t0
    stack.start_worker(wait=False)
    return ids, f"SIGTERM mid-job: worker exited {code} after {took:.1f} s (grace 1.5 s), job re-queued"


DRILLS: list[tuple[str, Callable[[LiveStack], tuple[list[str], str]]]] = [
    ("worker SIGKILL mid-job", drill_worker_sigkill),
    ("worker SIGKILL on every attempt", drill_worker_sigkill_last_attempt),
    ("Redis SIGKILL + restart (AOF)", drill_redis_restart),
    ("API restart mid-job", drill_api_restart),
    ("exception in a job", drill_bad_job),
    ("output directory unwritable", drill_output_unwritable),
    ("SIGTERM past the shutdown grace", drill_sigterm),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("needs redis-server")
    rows = []
    with tempfile.TemporaryDirectory(prefix="svg2-drill-") as tmp, LiveStack(
            Path(tmp), api_settings={"SVG2_MAX_ATTEMPTS": "3"},
            worker_settings={"SVG2_SHUTDOWN_GRACE_S": "1.5", "SVG2_MAX_ATTEMPTS": "3"}) as stack:
        stack.start_redis()
        stack.start_api()
        stack.start_worker()
        stack.start_worker()
        for name, drill in DRILLS:
            t0 = time.monotonic()
            ids, note = drill(stack)
            final = stack.wait_final(ids, 180)
            statuses = Counter(v["status"] for v in final.values())
            codes = Counter(v["error"]["code"] for v in final.values() if v["status"] == "failed" and v["error"])
            clear = sum(n for c, n in codes.items() if c in CLEAR_CODES)
            row = {"fault": name, "submitted": len(ids), "completed": statuses["completed"],
                   "failed_clear_code": clear, "codes": dict(codes),
                   "lost": len(ids) - statuses["completed"] - clear - statuses["cancelled"],
                   "seconds": round(time.monotonic() - t0, 1), "note": note}
            rows.append(row)
            print(f"{name:34s} submitted {row['submitted']} completed {row['completed']} failed "
                  f"{row['failed_clear_code']} {dict(codes)} lost {row['lost']}  ({note})", flush=True)
    table = _markdown(rows)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fault_drill.json").write_text(json.dumps(
        {"card": f"CPU, 2 cores ({platform.machine()}); tiny model", "rows": rows}, indent=2) + "\n")
    (args.out / "fault_drill.md").write_text(
        "# Fault drill\n\n`python bench/fault_drill.py` on CPU, 2 cores; real processes (Redis with AOF, "
        "the API, 2 tiny-model workers); heartbeat TTL 2 s, maintenance every 0.5 s, max 3 attempts, "
        "shutdown grace 1.5 s.\n\n" + table)
    return 0 if all(r["lost"] == 0 for r in rows) else 1


def _markdown(rows: list[dict]) -> str:
    lines = ["| fault | jobs submitted | completed | failed with a clear code | lost | what happened |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        codes = ", ".join(f"{c} x{n}" for c, n in r["codes"].items())
        lines.append(f"| {r['fault']} | {r['submitted']} | {r['completed']} | {r['failed_clear_code']}"
                     f"{f' ({codes})' if codes else ''} | **{r['lost']}** | {r['note']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
