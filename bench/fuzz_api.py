"""Fuzz the whole API from its OpenAPI schema with the schemathesis CLI: thousands of generated
requests (valid and invalid bodies, paths, queries, headers; all phases) against a real uvicorn
server with auth on and an admin key, on a Redis of its own. Passes when there is no 5xx and every
response matches the schema.

    python bench/fuzz_api.py                    # thousands of requests in ~2.5 min; writes docs/benchmarks/api_fuzz.{json,md}
    python bench/fuzz_api.py --max-examples 20 --max-time 20  # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import REPO_ROOT, LiveStack  # noqa: E402
from service.auth import KeyStore  # noqa: E402
from worker.store import JobStore  # noqa: E402

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=400, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--max-time", type=int, default=150,
                        help="seconds: fuzzing and stateful phases repeat until spent (thousands of requests)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="svg2-fuzz-") as tmp, LiveStack(Path(tmp)) as stack:
        stack.start_redis()
        stack.start_api(SVG2_AUTH_DISABLED="0", SVG2_RATE_LIMIT_RPS="0", SVG2_MAX_QUEUED_PER_KEY="1000000",
                        SVG2_MAX_QUEUED_TOTAL="1000000", SVG2_MAINTENANCE_INTERVAL_S="0")
        client = stack.client()
        token, _ = KeyStore(client).create("fuzz", admin=True)
        JobStore(client, stack.output_dir).heartbeat("fuzz-worker", {"model": "tiny", "queues": ["tiny"]}, 3600)
        report = Path(tmp) / "report.ndjson"
        cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{stack.base_url}/openapi.json",
               "--checks", CHECKS, "--max-examples", str(args.max_examples), "--seed", str(args.seed),
               "--max-time", str(args.max_time),
               "-H", f"Authorization: Bearer {token}", "--workers", "2", "--suppress-health-check", "all",
               "--report", "ndjson", "--report-ndjson-path", str(report), "--request-timeout", "30"]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        seconds = time.monotonic() - started
        output = proc.stdout + proc.stderr
        statuses = _statuses(report)
        api_log = stack.api.log() if stack.api else ""
    print(output[-4000:])
    result = {
        "card": f"CPU, 2 cores ({platform.processor() or platform.machine()}), loopback, auth on (admin key)",
        "schemathesis_exit_code": proc.returncode,
        "max_examples": args.max_examples,
        "max_time": args.max_time,
        "seed": args.seed,
        "checks": CHECKS.split(","),
        "requests": sum(statuses.values()),
        "responses_by_status": dict(sorted(statuses.items())),
        "server_errors": sum(n for s, n in statuses.items() if s >= 500 and s != 503),
        "seconds": round(seconds, 1),
        "api_tracebacks": api_log.count("Traceback"),
        "summary": output.strip().splitlines()[-12:],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "api_fuzz.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "api_fuzz.md").write_text(_markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2))
    return 0 if proc.returncode == 0 and result["server_errors"] == 0 else 1


def _statuses(report: Path) -> dict[int, int]:
    """Count responses by status code from schemathesis' NDJSON event stream (every recorded
    interaction of every scenario)."""
    counts: dict[int, int] = {}
    if not report.exists():
        return counts

    def walk(node) -> None:
        if isinstance(node, dict):
            response = node.get("response")
            if isinstance(response, dict) and isinstance(response.get("status_code"), int) and "request" in node:
                code = response["status_code"]
                counts[code] = counts.get(code, 0) + 1
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for line in report.read_text().splitlines():
        if line.strip():
            walk(json.loads(line))
    return counts


def _markdown(r: dict) -> str:
    rows = "\n".join(f"| {s} | {n} |" for s, n in r["responses_by_status"].items())
    return f"""# API fuzzing (schemathesis, from the OpenAPI schema)

`python bench/fuzz_api.py --max-examples {r['max_examples']} --max-time {r['max_time']} --seed {r['seed']}` on
{r['card']}.
Every operation of `/openapi.json`, all schemathesis phases (examples, coverage, fuzzing, stateful),
valid and invalid inputs. Checks: {', '.join(r['checks'])}.

- generated requests: **{r['requests']}** in {r['seconds']} s
- 5xx other than 503: **{r['server_errors']}**; tracebacks in the API log: {r['api_tracebacks']}
- schemathesis exit code: {r['schemathesis_exit_code']} (0: every check passed)

| status | responses |
|---|---|
{rows}

Schemathesis summary:

```
{chr(10).join(r['summary'])}
```
"""


if __name__ == "__main__":
    sys.exit(main())
