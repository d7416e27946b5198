"""Benchmark: one inference process under many connections at once (graceful degradation).

One run, one machine, loopback:
1. start the embedded stack (broker, S3, MLflow) on free ports;
2. log one GRU run the way the trainer does and promote it (bench/support, as bench/inference.py);
3. serve it with ONE `python -m inference_container` process (WORKERS=1, fast path on);
4. raise this process's open-file limit so that wrk and the server (which inherit it) can hold
   every connection, then drive POST /predict with wrk at each CONNECTIONS count in turn (a short
   warm-up first), sliding windows from data/PobleSec_test.csv;
5. print for each count: req/s, p50, p99, errors (non-2xx answers + socket errors: connect, read,
   write, timeout after wrk's 2 s), the server's resident memory (now, and its peak since it
   started, VmHWM) and what the server itself answered by status (from its /metrics);
   the last line says whether the service holds at the largest count: 0 errors, p99 <= 500 ms and
   peak RSS <= 500 MiB.

    .venv/bin/python bench/connections.py [--duration 30] [--connections 20,1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import support
from bench.inference import BODIES, flts_body, windows
from flts_cli.stack import free_port

MAX_P99_S = 0.5
MAX_RSS_MIB = 500.0
# Beyond the connections themselves: wrk's and the server's own files, sockets and libraries.
FD_MARGIN = 512


def raise_open_files(connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE (inherited by wrk and the server) to fit `connections` sockets
    on each side; fails when the hard limit is lower. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + FD_MARGIN
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        raise RuntimeError(f"open-file hard limit {hard} < {wanted}: raise it (ulimit -Hn) and rerun")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, resident peak since start) of one process, in MiB, from /proc."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0  # kB
    return values["VmRSS"], values["VmHWM"]


def answered(url: str) -> Counter[str]:
    """POST /predict answers so far by status, as the server counts them (its /metrics): tells a
    request the server answered late (a client timeout) from one it refused."""
    status, text = support.http_json(f"{url}/metrics", timeout=30.0)
    if status != 200 or not isinstance(text, str):
        raise RuntimeError(f"/metrics answered {status}")
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "inference_requests_total" and sample.labels.get("route") == "/predict":
                counts[sample.labels["status"]] += int(sample.value)
    return counts


def machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def describe(connections: int, result: dict[str, Any]) -> str:
    return (
        f"{connections:>5} connections  rps={result['rps']:>8.1f}  p50={result['p50'] * 1000:>7.1f} ms  "
        f"p99={result['p99'] * 1000:>7.1f} ms  errors={result['failures']}  requests={result['requests']}  "
        f"server rss={result['rss_mib']:.0f} MiB (peak {result['peak_rss_mib']:.0f} MiB)  "
        f"server answered {result['answered']}"
    )


def holds(result: dict[str, Any]) -> bool:
    return bool(
        result["failures"] == 0 and result["p99"] <= MAX_P99_S and result["peak_rss_mib"] <= MAX_RSS_MIB
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=30, help="seconds of load per connection count")
    parser.add_argument(
        "--connections", default="20,1000", help="comma list of connection counts, driven in this order"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    args = parser.parse_args()
    counts = [int(c) for c in args.connections.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        parser.error("--connections needs positive counts")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install -y wrk)")
    limit = raise_open_files(max(counts))

    with support.promoted_gru_stack("flts-bench-connections-") as bench:
        bodies = [flts_body(w) for w in windows(BODIES)]
        port = free_port()
        env = bench.inference_env(port, workers=1)
        log = bench.workdir / "inference.log"
        url = f"http://127.0.0.1:{port}"
        results: dict[int, dict[str, Any]] = {}
        with support.process([sys.executable, "-m", "inference_container"], env, log) as proc:
            support.wait_ready(
                functools.partial(support.answers_200, f"{url}/readyz"), proc, 120, log, streak=5
            )
            status, answer = support.http_json(f"{url}/predict", bodies[0])
            if status != 200:
                raise RuntimeError(f"/predict answered {status}: {answer}")
            print(
                f"one inference process (pid {proc.pid}, WORKERS=1), wrk -t{args.threads}, "
                f"{args.duration}s per count, loopback, open-file limit {limit}; machine: {machine()}",
                flush=True,
            )
            for connections in counts:
                # Warm-up: opening the connections and the first calls are not what is measured.
                support.run_wrk(f"{url}/predict", bodies, connections, 3, args.threads, bench.workdir)
                before = answered(url)
                result = support.run_wrk(
                    f"{url}/predict", bodies, connections, args.duration, args.threads, bench.workdir
                )
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {proc.returncode}: {log.read_text()[-2000:]}")
                result["rss_mib"], result["peak_rss_mib"] = memory_mib(proc.pid)
                # Includes answers to requests wrk had already given up on (counted as timeouts).
                delta = answered(url) - before
                result["answered"] = " ".join(f"{code}x{n}" for code, n in sorted(delta.items())) or "nothing"
                results[connections] = result
                print(describe(connections, result), flush=True)
        print(f"machine after the runs: {machine()}", flush=True)
        top = max(counts)
        worst = results[top]
        verdict = "HOLDS" if holds(worst) else "DOES NOT HOLD"
        print(
            f"RESULT {verdict} at {top} connections: errors={worst['failures']} (need 0), "
            f"p99={worst['p99'] * 1000:.1f} ms (need <= {MAX_P99_S * 1000:.0f}), "
            f"peak rss={worst['peak_rss_mib']:.0f} MiB (need <= {MAX_RSS_MIB:.0f}), rps={worst['rps']:.0f}",
            flush=True,
        )
        return 0


if __name__ == "__main__":
    sys.exit(main())
