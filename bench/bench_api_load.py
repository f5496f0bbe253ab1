"""Load on loopback: sustained requests per second and latency of ``GET /v1/videos/{id}`` and
``POST /v1/videos`` with auth on (every request looks its key up and counts its rate in Redis), zero
errors and zero lost jobs; then queue pickup latency (enqueue to worker start) with a tiny worker.

    python bench/bench_api_load.py            # writes docs/benchmarks/api_load.{json,md}

Load generator: ``wrk`` (apt-get install wrk), one thread, on the same 2 cores as the API, Redis and
the worker. Everything runs as real processes (bench/stack.py): a Redis of its own (append-only,
fsync every second as in deploy/compose.yaml), ``python -m service`` (one uvicorn process), one
``svg2-worker`` on the tiny model for the pickup phase.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.stack import REPO_ROOT, LiveStack  # noqa: E402
from service.auth import KeyStore  # noqa: E402

GET_LUA = """
ids = {%s}
request = function()
  return wrk.format("GET", "/v1/videos/" .. ids[math.random(#ids)], {["Authorization"] = "Bearer %s"})
end
"""
POST_LUA = """
wrk.method = "POST"
wrk.body = '{"prompt": "a red fox running through snow", "num_frames": 5, "num_inference_steps": 2, "size": "64x64"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def run_wrk(url: str, script: str, seconds: int, connections: int, tmp: Path) -> dict:
    """Run wrk (1 thread) and parse its summary: requests/s, latency percentiles, errors."""
    lua = tmp / f"wrk_{random.randrange(1 << 30)}.lua"
    lua.write_text(script)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url],
                         capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": requests,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms("50"), "p90_ms": ms("90"), "p99_ms": ms("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(g) for g in socket_err.groups()) if socket_err else 0,
        "seconds": seconds, "connections": connections,
        "wrk_output": out.strip().splitlines(),
    }


def pickup_latency(stack: LiveStack, token: str, jobs: int) -> dict:
    """Submit tiny jobs one at a time to an idle worker; queue_wait_seconds (created_at to
    mark_started, recorded by the store) of each."""
    waits = []
    headers = {"Authorization": f"Bearer {token}"}
    body = {"prompt": "pickup", "num_frames": 5, "num_inference_steps": 1, "size": "32x32"}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30) as http:
        for _ in range(jobs):
            job = http.post("/v1/videos", json=body).json()["id"]
            deadline = time.monotonic() + 60
            while (video := http.get(f"/v1/videos/{job}").json())["status"] not in ("completed", "failed"):
                if time.monotonic() > deadline:
                    raise TimeoutError(video)
                time.sleep(0.02)
            assert video["status"] == "completed", video
            waits.append(video["metrics"]["queue_wait_seconds"] * 1000)
            time.sleep(0.2)  # the worker is back in its blocking dequeue
    waits.sort()
    return {"jobs": jobs, "p50_ms": statistics.median(waits), "p99_ms": waits[min(len(waits) - 1, int(0.99 * len(waits)))],
            "max_ms": waits[-1], "mean_ms": statistics.fmean(waits)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--get-connections", type=int, default=16)
    parser.add_argument("--post-connections", type=int, default=8)
    parser.add_argument("--seed-jobs", type=int, default=200)
    parser.add_argument("--pickup-jobs", type=int, default=40)
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn processes (SVG2_WORKERS)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install wrk")

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="svg2-load-") as tmp_name, LiveStack(Path(tmp_name)) as stack:
        tmp = Path(tmp_name)
        stack.start_redis(appendfsync="everysec")
        stack.start_api(SVG2_AUTH_DISABLED="0", SVG2_RATE_LIMIT_RPS="1000000", SVG2_MAX_QUEUED_PER_KEY="1000000",
                        SVG2_MAX_QUEUED_TOTAL="1000000", SVG2_MAINTENANCE_INTERVAL_S="10",
                        SVG2_WORKERS=str(args.api_workers))
        client = stack.client()
        token, _ = KeyStore(client).create("load")
        headers = {"Authorization": f"Bearer {token}"}
        body = {"prompt": "seed", "num_frames": 5, "num_inference_steps": 2, "size": "64x64"}
        with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30) as http:
            ids = [http.post("/v1/videos", json=body).json()["id"] for _ in range(args.seed_jobs)]

        get = run_wrk(stack.base_url, GET_LUA % (", ".join(f'"{i}"' for i in ids), token), args.seconds,
                      args.get_connections, tmp)
        before = client.zcard("svg2:jobs")
        post = run_wrk(stack.base_url + "/v1/videos", POST_LUA % token, args.seconds, args.post_connections, tmp)
        time.sleep(1.0)
        records = {i.decode() for i in client.zrange("svg2:jobs", 0, -1)}
        queued = {i.decode() for i in client.lrange("rq:queue:tiny", 0, -1)}
        created = len(records) - before
        # Lost: a 2xx answer whose job is not both recorded and queued (in-flight requests at the end of
        # the run may add up to `connections` jobs that wrk did not count).
        post["jobs_created"] = created
        post["lost_jobs"] = max(0, post["requests"] - post["non_2xx"] - created) + len(records ^ queued)
        client.delete("rq:queue:tiny")  # the pickup phase starts with an empty queue
        for raw in client.smembers("svg2:queued"):
            client.srem("svg2:queued", raw)
        for key in client.scan_iter("svg2:queued:owner:*"):
            client.delete(key)

        stack.start_worker()
        pickup = pickup_latency(stack, token, args.pickup_jobs)
    load_after = os.getloadavg()

    result = {
        "card": f"CPU, 2 cores ({platform.machine()}), loopback; wrk 1 thread, API ({args.api_workers} uvicorn "
                "processes), Redis and the worker on the same 2 cores",
        "conditions": f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (other engineers' "
                      "tests share the machine)",
        "auth": "on (Bearer key looked up + rate counted in Redis per request)",
        "get_status": get, "post_create": post, "queue_pickup": pickup,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "api_load.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "api_load.md").write_text(_markdown(result))
    print(_markdown(result))
    ok = get["non_2xx"] == get["socket_errors"] == post["non_2xx"] == post["socket_errors"] == post["lost_jobs"] == 0
    return 0 if ok else 1


def _markdown(r: dict) -> str:
    g, p, q = r["get_status"], r["post_create"], r["queue_pickup"]
    return f"""# API load (loopback)

`python bench/bench_api_load.py` on {r['card']}. Auth {r['auth']}. Conditions: {r['conditions']}.

| endpoint | connections | requests | requests/s | p50 ms | p90 ms | p99 ms | non-2xx | socket errors |
|---|---|---|---|---|---|---|---|---|
| `GET /v1/videos/{{id}}` | {g['connections']} | {g['requests']} | **{g['requests_per_s']:.0f}** | {g['p50_ms']:.2f} | {g['p90_ms']:.2f} | **{g['p99_ms']:.2f}** | {g['non_2xx']} | {g['socket_errors']} |
| `POST /v1/videos` | {p['connections']} | {p['requests']} | **{p['requests_per_s']:.0f}** | {p['p50_ms']:.2f} | {p['p90_ms']:.2f} | **{p['p99_ms']:.2f}** | {p['non_2xx']} | {p['socket_errors']} |

POST: {p['jobs_created']} jobs created during the run, **{p['lost_jobs']} lost** (every 2xx answer has its
record, and every record its rq job).

Queue pickup latency (job created → worker marks it started; one idle tiny worker, {q['jobs']} jobs
submitted one at a time): p50 **{q['p50_ms']:.1f} ms**, p99 **{q['p99_ms']:.1f} ms**, max {q['max_ms']:.1f} ms.

Each run lasts {g['seconds']} s per endpoint (wrk `-t1 --latency`).
"""


if __name__ == "__main__":
    sys.exit(main())
