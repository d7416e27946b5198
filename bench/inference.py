"""Benchmark: this inference service against `mlflow models serve` of the same model, same load,
and its POST /predict fast path against a plain FastAPI route doing the same work.

One run, one machine, loopback:
1. start the embedded stack (broker, S3, MLflow) on free ports;
2. log one GRU run the way the trainer does (the MLflow model at `GRU/`: weights, scaler and
   preprocess config inside, shared.model_runtime.pyfunc around the runtime), promote it and
   register it as `flts-<identifier>@champion`, so both servers load the same artifact and do the
   same work per request: check a window of 10 real rows, scale, add time features, one forward
   pass, unscale;
3. serve it with `python -m inference_container` (WORKERS processes on one socket) after a
   promotion pointer, twice at once: PREDICT_FAST_PATH on (POST /predict answered from raw ASGI
   messages) and off (the FastAPI route); and the registered champion itself with
   `mlflow models serve -m models:/flts-<identifier>@champion --env-manager local`;
4. check the servers answer the same numbers for the same window, then drive each with the same
   load: wrk if installed (else Locust FastHttpUser), CONNECTIONS connections, DURATION seconds,
   sliding windows from data/PobleSec_test.csv. The two flts variants take turns, ROUNDS times;
   their figures are the medians over the rounds (failures: the sum);
5. print RPS, p50, p99, failures and server CPU per request (user + system CPU of the server's
   process group over the run, divided by its requests) for each; the last two lines hold the
   fast path's ratios and this service's against mlflow serve, CPU per request included.

    .venv/bin/python bench/inference.py [--duration 30] [--connections 20] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import support
from flts_cli.stack import free_port
from shared.data import KPI_COLUMNS

WINDOW = 10
BODIES = 200
Result = dict[str, Any]


def windows(count: int) -> list[pd.DataFrame]:
    frame = pd.read_csv(support.DATA / "PobleSec_test.csv", parse_dates=["time"])
    starts = np.linspace(0, len(frame) - WINDOW, count).astype(int)
    return [frame.iloc[s : s + WINDOW] for s in starts]


def flts_body(window: pd.DataFrame) -> bytes:
    data: dict[str, Any] = {"ts": window["time"].dt.strftime("%Y-%m-%d %H:%M:%S").tolist()}
    for name in KPI_COLUMNS:
        data[name] = window[name].astype(float).tolist()
    return json.dumps({"data": data, "inference_length": 1}).encode()


def mlflow_body(window: pd.DataFrame) -> bytes:
    rows = [
        [t.strftime("%Y-%m-%dT%H:%M:%S"), *(float(v) for v in values)]
        for t, values in zip(window["time"], window[list(KPI_COLUMNS)].to_numpy(), strict=True)
    ]
    split = {"columns": ["time", *KPI_COLUMNS], "data": rows}
    return json.dumps({"dataframe_split": split, "params": {"inference_length": 1}}).encode()


# -- load generators ----------------------------------------------------------------------------


def run_locust(url: str, bodies: list[bytes], connections: int, duration: int, workdir: Path) -> Result:
    """Fallback when wrk is absent: Locust FastHttpUser, one user per connection, no think time."""
    payloads = workdir / f"bodies-{abs(hash(url))}.json"
    payloads.write_text(json.dumps([b.decode() for b in bodies]))
    locustfile = workdir / "bench_locustfile.py"
    locustfile.write_text(
        "import itertools, json, os\n"
        "from locust import constant, task\n"
        "from locust.contrib.fasthttp import FastHttpUser\n"
        "BODIES = [b.encode() for b in json.load(open(os.environ['BENCH_BODIES']))]\n"
        "PATH = os.environ['BENCH_PATH']\n"
        "class Bench(FastHttpUser):\n"
        "    wait_time = constant(0)\n"
        "    def on_start(self):\n"
        "        self.cycle = itertools.cycle(BODIES)\n"
        "    @task\n"
        "    def post(self):\n"
        "        headers = {'Content-Type': 'application/json'}\n"
        "        self.client.post(PATH, data=next(self.cycle), headers=headers)\n"
    )
    base, _, path = url.partition("://")[2].partition("/")
    prefix = workdir / f"locust-{abs(hash(url))}"
    env = {**os.environ, "BENCH_BODIES": str(payloads), "BENCH_PATH": "/" + path}
    argv = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(locustfile),
        "--headless",
        "-u",
        str(connections),
        "-r",
        str(connections),
        "-t",
        f"{duration}s",
        "--csv",
        str(prefix),
        "--host",
        f"http://{base}",
        "--only-summary",
    ]
    subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    with open(f"{prefix}_stats.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    return {
        "rps": float(row["Requests/s"]),
        "p50": float(row["50%"]) / 1000.0,
        "p99": float(row["99%"]) / 1000.0,
        "failures": int(row["Failure Count"]),
        "requests": int(row["Request Count"]),
        "tool": "locust",
    }


def drive(url: str, bodies: list[bytes], args: argparse.Namespace, workdir: Path, pgid: int) -> Result:
    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk"))
    # A short warm-up first: connection set-up and first-call costs are not what we measure.
    if use_wrk:
        support.run_wrk(url, bodies, args.connections, 3, args.threads, workdir)
        cpu_before = support.group_cpu_seconds(pgid)
        result = support.run_wrk(url, bodies, args.connections, args.duration, args.threads, workdir)
    else:
        run_locust(url, bodies, args.connections, 3, workdir)
        cpu_before = support.group_cpu_seconds(pgid)
        result = run_locust(url, bodies, args.connections, args.duration, workdir)
    cpu = support.group_cpu_seconds(pgid) - cpu_before
    result["cpu_ms_per_request"] = 1000.0 * cpu / max(1, result["requests"])
    return result


def describe(name: str, result: Result) -> str:
    return (
        f"{name:<22} rps={result['rps']:>8.1f}  p50={result['p50'] * 1000:>7.2f} ms  "
        f"p99={result['p99'] * 1000:>7.2f} ms  failures={result['failures']}  "
        f"requests={result['requests']}  server cpu/request={result['cpu_ms_per_request']:.2f} ms  "
        f"({result['tool']})"
    )


def summary(result: Result) -> str:
    return (
        f"rps={result['rps']:.0f} p50={result['p50'] * 1000:.1f}ms p99={result['p99'] * 1000:.1f}ms "
        f"failures={result['failures']} cpu/request={result['cpu_ms_per_request']:.2f}ms"
    )


def median_of(rounds: list[Result]) -> Result:
    """One figure per variant from its rounds: medians of the rates and latencies, sums of the
    counts."""
    merged: Result = {
        key: statistics.median(r[key] for r in rounds) for key in ("rps", "p50", "p99", "cpu_ms_per_request")
    }
    merged["failures"] = sum(r["failures"] for r in rounds)
    merged["requests"] = sum(r["requests"] for r in rounds)
    merged["tool"] = rounds[0]["tool"]
    return merged


def compare(name: str, mine: Result, other: Result) -> tuple[float, float, str]:
    """(rps ratio, p99 ratio, a line naming them) of `mine` against `other`."""
    rps_ratio = mine["rps"] / other["rps"] if other["rps"] else math.inf
    p99_ratio = mine["p99"] / other["p99"] if other["p99"] else math.inf
    return (
        rps_ratio,
        p99_ratio,
        f"{name} {summary(other)} | rps_ratio={rps_ratio:.2f}x p99_ratio={p99_ratio:.2f}",
    )


def predictions_of(answer: Any, key: str) -> np.ndarray:
    return np.array([[row[k] for k in KPI_COLUMNS] for row in answer[key]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=30, help="seconds of load per server and round")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="processes of this service")
    parser.add_argument("--rounds", type=int, default=3, help="turns of fast path and plain route")
    parser.add_argument("--mlflow-workers", type=int, default=1, help="uvicorn workers of mlflow serve")
    parser.add_argument("--load", choices=("auto", "wrk", "locust"), default="auto")
    parser.add_argument("--skip-mlflow", action="store_true", help="measure this service only")
    args = parser.parse_args()

    with support.promoted_gru_stack("flts-bench-") as bench:
        stack, workdir, identifier = bench.stack, bench.workdir, bench.identifier
        champion = support.register_champion(stack, bench.run, identifier)
        sample = windows(BODIES)
        flts_bodies = [flts_body(w) for w in sample]
        env = {**os.environ, **stack.service_env(), "PYTHONPATH": str(support.REPO)}
        print(f"load: {args.connections} connections, {args.duration}s, loopback", flush=True)

        # Both variants run side by side and take turns under load, so a change in what else the
        # machine does falls on both.
        variants = {"fast path": "true", "plain route": "false"}
        rounds: dict[str, list[Result]] = {name: [] for name in variants}
        with contextlib.ExitStack() as servers:
            urls: dict[str, tuple[str, int]] = {}
            for name, fast in variants.items():
                port = free_port()
                variant_env = bench.inference_env(port, args.workers, PREDICT_FAST_PATH=fast)
                log = workdir / f"flts-{fast}.log"
                proc = servers.enter_context(
                    support.process([sys.executable, "-m", "inference_container"], variant_env, log)
                )
                url = f"http://127.0.0.1:{port}"
                # 30 answers in a row, each on a new connection: every worker has loaded its model.
                support.wait_ready(
                    functools.partial(support.answers_200, f"{url}/readyz"), proc, 120, log, streak=30
                )
                urls[name] = (url, proc.pid)
            answers = {
                name: support.http_json(f"{url}/predict", flts_bodies[0]) for name, (url, _) in urls.items()
            }
            for name, (status, answer) in answers.items():
                if status != 200:
                    raise RuntimeError(f"flts ({name}) /predict answered {status}: {answer}")
            flts_answer = answers["fast path"][1]
            if answers["plain route"][1] != flts_answer:
                raise RuntimeError("the fast path and the plain route answer the same window differently")
            for turn in range(1, args.rounds + 1):
                for name, (url, pgid) in urls.items():
                    result = drive(f"{url}/predict", flts_bodies, args, workdir, pgid)
                    rounds[name].append(result)
                    print(describe(f"flts {name} #{turn}", result), flush=True)
        results = {name: median_of(found) for name, found in rounds.items()}
        for name, result in results.items():
            print(describe(f"flts {name} (median)", result), flush=True)

        if not args.skip_mlflow:
            mlflow_port = free_port()
            argv = [
                str(Path(sys.executable).parent / "mlflow"),
                "models",
                "serve",
                "-m",
                champion,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(mlflow_port),
                "-w",
                str(args.mlflow_workers),
            ]
            mlflow_url = f"http://127.0.0.1:{mlflow_port}"
            # mlflow serve execs `uvicorn` through bash: the venv's bin must be on PATH.
            serve_env = {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}
            log = workdir / "mlflow-serve.log"
            with support.process(argv, serve_env, log) as proc:
                support.wait_ready(
                    functools.partial(support.answers_200, f"{mlflow_url}/ping"), proc, 180, log, streak=30
                )
                status, answer = support.http_json(f"{mlflow_url}/invocations", mlflow_body(sample[0]))
                if status != 200:
                    raise RuntimeError(f"mlflow serve answered {status}: {answer}")
                ours, theirs = (
                    predictions_of(flts_answer, "predictions"),
                    predictions_of(answer, "predictions"),
                )
                # The network computes in float32: two processes may differ in the last bits.
                same = bool(np.allclose(ours, theirs, rtol=1e-5, atol=0))
                worst = float(np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-300)))
                print(
                    f"same window, same numbers from both servers: {same} (relative gap {worst:.2g})",
                    flush=True,
                )
                results["mlflow"] = drive(
                    f"{mlflow_url}/invocations", [mlflow_body(w) for w in sample], args, workdir, proc.pid
                )
                results["mlflow"]["same_numbers"] = same
                print(describe(f"mlflow serve ({args.mlflow_workers} w)", results["mlflow"]), flush=True)

        flts = results["fast path"]
        _, _, line = compare("plain route", flts, results["plain route"])
        print(f"FAST PATH fast path {summary(flts)} | {line}", flush=True)
        bar = flts["failures"] == 0 and flts["rps"] >= 1500 and flts["p99"] <= 0.030
        line = f"RESULT flts {summary(flts)}"
        if "mlflow" in results:
            rps_ratio, p99_ratio, against = compare("mlflow", flts, results["mlflow"])
            bar = bar and rps_ratio >= 2.0 and p99_ratio <= 0.5 and results["mlflow"]["same_numbers"]
            line += f" | {against}"
        else:
            line += " | mlflow skipped"
        print(f"{line} | bar {'met' if bar else 'NOT met'}", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
