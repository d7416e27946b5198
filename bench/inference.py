"""Benchmark: this inference service against `mlflow models serve` of the same model, same load.

One run, one machine, loopback:
1. start the embedded stack (broker, S3, MLflow) on free ports;
2. log one GRU run the way the trainer does (`GRU/`, `scaler/`, `preprocess/`) and, into the same
   run, an MLflow pyfunc model wrapping the same weights and the same forecasting code
   (shared.model_runtime.forecasting), so both servers do the same work per request: parse a window of 10
   real rows, scale, add time features, one forward pass, unscale;
3. serve it with `python -m inference_container` (WORKERS processes on one socket) after a
   promotion pointer, and with `mlflow models serve --env-manager local`;
4. check both answer the same numbers for the same window, then drive each with the same load:
   wrk if installed (else Locust FastHttpUser), CONNECTIONS connections, DURATION seconds,
   sliding windows from data/PobleSec_test.csv;
5. print RPS, p50, p99 and failures for each; the last line holds the ratios.

    .venv/bin/python bench/inference.py [--duration 30] [--connections 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from flts_cli.stack import LocalStack, StackConfig, free_port
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, MinMaxScaler
from shared.events import ModelType, PromotionPointer
from shared.mlflow_utils import ensure_experiment
from shared.model_runtime.networks import ModelSpec, build_model, save_model
from shared.storage import ObjectStore

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
WINDOW = 10
BODIES = 200


class WindowForecaster(mlflow.pyfunc.PythonModel):
    """The same model behind MLflow's scoring server: rows (ts + 11 KPIs) in, forecast out."""

    def load_context(self, context: Any) -> None:
        import numpy as np
        import torch

        from shared.data import MinMaxScaler
        from shared.model_runtime.forecasting import RecurrentForecast
        from shared.model_runtime.networks import load_model

        torch.set_num_threads(1)
        model = load_model(Path(context.artifacts["model_dir"]))
        scaler = MinMaxScaler.from_dict(json.loads(Path(context.artifacts["scaler"]).read_text()))
        spec = model.spec
        self.forecast = RecurrentForecast(
            model, scaler, spec.input_seq_len, spec.output_seq_len, np.timedelta64(120, "s")
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        import numpy as np
        import pandas as pd

        from shared.data import KPI_COLUMNS

        timestamps = pd.to_datetime(model_input["ts"]).to_numpy()
        kpis = model_input[list(KPI_COLUMNS)].to_numpy(dtype=np.float64)
        horizon = int((params or {}).get("inference_length", 1))
        values = self.forecast.predict(timestamps, kpis, horizon)
        return pd.DataFrame(values, columns=list(KPI_COLUMNS))


def log_models(stack: StackConfig, workdir: Path, identifier: str) -> tuple[str, str]:
    """One run holding the trainer's layout and a pyfunc of the same weights; returns (run_id, hash)."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("GRU")).eval()
    train = pd.read_csv(DATA / "PobleSec.csv", usecols=list(KPI_COLUMNS))
    scaler = MinMaxScaler.fit(train)
    config_hash = "b" * 64
    meta = {
        "config_hash": config_hash,
        "dataset": "PobleSec",
        "identifier": identifier,
        "columns": list(FEATURE_COLUMNS),
        "scaler": scaler.to_dict(),
        "step_seconds": 120,
    }
    save_model(model, workdir / "GRU")
    (workdir / "scaler").mkdir()
    (workdir / "scaler" / "scaler.json").write_text(json.dumps(scaler.to_dict()))
    (workdir / "preprocess").mkdir()
    (workdir / "preprocess" / "preprocess_config.json").write_text(json.dumps(meta))
    mlflow.set_tracking_uri(stack.mlflow_url)
    client = MlflowClient(stack.mlflow_url)
    experiment_id = ensure_experiment(client, "Default")
    with mlflow.start_run(experiment_id=experiment_id, run_name="GRU") as run:
        mlflow.set_tags({"config_hash": config_hash, "model_type": "GRU", "identifier": identifier})
        for sub in ("GRU", "scaler", "preprocess"):
            mlflow.log_artifacts(str(workdir / sub), sub)
        mlflow.pyfunc.log_model(
            name="pyfunc",
            python_model=WindowForecaster(),
            artifacts={"model_dir": str(workdir / "GRU"), "scaler": str(workdir / "scaler" / "scaler.json")},
            # Pinned: resolving requirements by inference costs seconds and is not what we measure.
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}"],
        )
        return run.info.run_id, config_hash


def windows(count: int) -> list[pd.DataFrame]:
    frame = pd.read_csv(DATA / "PobleSec_test.csv", parse_dates=["time"])
    starts = np.linspace(0, len(frame) - WINDOW, count).astype(int)
    return [frame.iloc[s : s + WINDOW] for s in starts]


def flts_body(window: pd.DataFrame) -> bytes:
    data: dict[str, Any] = {"ts": window["time"].dt.strftime("%Y-%m-%d %H:%M:%S").tolist()}
    for name in KPI_COLUMNS:
        data[name] = window[name].astype(float).tolist()
    return json.dumps({"data": data, "inference_length": 1}).encode()


def mlflow_body(window: pd.DataFrame) -> bytes:
    rows = [
        [t.strftime("%Y-%m-%d %H:%M:%S"), *(float(v) for v in values)]
        for t, values in zip(window["time"], window[list(KPI_COLUMNS)].to_numpy(), strict=True)
    ]
    split = {"columns": ["ts", *KPI_COLUMNS], "data": rows}
    return json.dumps({"dataframe_split": split, "params": {"inference_length": 1}}).encode()


def http_json(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            try:
                return response.status, json.loads(raw)
            except ValueError:
                return response.status, raw.decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, None


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    """Ready = 30 answers in a row of 200, each on a new connection: with several worker
    processes on one socket, every worker must have loaded its model."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} server exited: {log.read_text()[-2000:]}")
        streak = streak + 1 if http_json(url, timeout=2.0)[0] == 200 else 0
        if streak >= 30:
            return
        time.sleep(0.05 if streak else 0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f}s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in a process group (from /proc): the cost per
    request, which other load on the machine does not change as much as it changes latency."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state ppid pgrp ... utime(12) stime(13), 0-based from state.
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


# -- load generators ----------------------------------------------------------------------------


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unknown wrk duration {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def run_wrk(
    url: str, bodies: list[bytes], connections: int, duration: int, threads: int, workdir: Path
) -> dict:
    script = workdir / f"load-{abs(hash(url))}.lua"
    entries = ",\n".join(f"[==[{b.decode()}]==]" for b in bodies)
    script.write_text(
        f"local bodies = {{\n{entries}\n}}\n"
        "local n = #bodies\n"
        "local i = 0\n"
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n"
        "  i = i % n + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[i])\n"
        "end\n"
    )
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _seconds(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failures = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        failures += sum(int(g) for g in socket_errors.groups())
    return {"rps": rps, "p50": p50, "p99": p99, "failures": failures, "requests": total, "tool": "wrk"}


def run_locust(url: str, bodies: list[bytes], connections: int, duration: int, workdir: Path) -> dict:
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


def drive(url: str, bodies: list[bytes], args: argparse.Namespace, workdir: Path, pgid: int) -> dict:
    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk"))
    # A short warm-up first: connection set-up and first-call costs are not what we measure.
    if use_wrk:
        run_wrk(url, bodies, args.connections, 3, args.threads, workdir)
        cpu_before = group_cpu_seconds(pgid)
        result = run_wrk(url, bodies, args.connections, args.duration, args.threads, workdir)
    else:
        run_locust(url, bodies, args.connections, 3, workdir)
        cpu_before = group_cpu_seconds(pgid)
        result = run_locust(url, bodies, args.connections, args.duration, workdir)
    cpu = group_cpu_seconds(pgid) - cpu_before
    result["cpu_ms_per_request"] = 1000.0 * cpu / max(1, result["requests"])
    return result


def describe(name: str, result: dict) -> str:
    return (
        f"{name:<22} rps={result['rps']:>8.1f}  p50={result['p50'] * 1000:>7.2f} ms  "
        f"p99={result['p99'] * 1000:>7.2f} ms  failures={result['failures']}  "
        f"requests={result['requests']}  server cpu/request={result['cpu_ms_per_request']:.2f} ms  "
        f"({result['tool']})"
    )


def summary(result: dict) -> str:
    return (
        f"rps={result['rps']:.0f} p50={result['p50'] * 1000:.1f}ms p99={result['p99'] * 1000:.1f}ms "
        f"failures={result['failures']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=30, help="seconds of load per server")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="processes of this service")
    parser.add_argument("--mlflow-workers", type=int, default=1, help="uvicorn workers of mlflow serve")
    parser.add_argument("--load", choices=("auto", "wrk", "locust"), default="auto")
    parser.add_argument("--skip-mlflow", action="store_true", help="measure this service only")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="flts-bench-"))
    stack = StackConfig(
        kafka_port=free_port(), s3_port=free_port(), mlflow_port=free_port(), state_dir=workdir / "stack"
    )
    local = LocalStack(stack)
    print(f"starting the stack in {workdir} ...", flush=True)
    local.start()
    try:
        identifier = f"bench-{os.getpid()}"
        run_id, config_hash = log_models(stack, workdir / "artifacts", identifier)
        pointer = PromotionPointer(
            identifier=identifier,
            config_hash=config_hash,
            run_id=run_id,
            model_type=ModelType.GRU,
            experiment="Default",
            model_uri=f"runs:/{run_id}/GRU",
            rmse=0.0,
            mae=0.0,
            mse=0.0,
            score=0.0,
            weights={"rmse": 0.5, "mae": 0.3, "mse": 0.2},
            scoreboard=[],
            timestamp=datetime.now(UTC),
        )
        store = ObjectStore(stack.s3_url, stack.access_key, stack.secret_key)
        store.put_json("model-promotion", f"{identifier}/current.json", pointer.model_dump(mode="json"))
        sample = windows(BODIES)
        env = {**os.environ, **stack.service_env(), "PYTHONPATH": str(REPO)}
        results: dict[str, dict] = {}

        flts_port = free_port()
        flts_env = {
            **env,
            "IDENTIFIER": identifier,
            "INFERENCE_HOST": "127.0.0.1",
            "INFERENCE_PORT": str(flts_port),
            "WORKERS": str(args.workers),
            "LOG_LEVEL": "WARNING",
        }
        flts_url = f"http://127.0.0.1:{flts_port}"
        with process([sys.executable, "-m", "inference_container"], flts_env, workdir / "flts.log") as proc:
            wait_ready(f"{flts_url}/readyz", proc, 120, workdir / "flts.log")
            status, flts_answer = http_json(f"{flts_url}/predict", flts_body(sample[0]))
            if status != 200:
                raise RuntimeError(f"flts /predict answered {status}: {flts_answer}")
            print(f"load: {args.connections} connections, {args.duration}s, loopback", flush=True)
            results["flts"] = drive(
                f"{flts_url}/predict", [flts_body(w) for w in sample], args, workdir, proc.pid
            )
            print(describe(f"flts ({args.workers} workers)", results["flts"]), flush=True)

        if not args.skip_mlflow:
            mlflow_port = free_port()
            argv = [
                str(Path(sys.executable).parent / "mlflow"),
                "models",
                "serve",
                "-m",
                f"runs:/{run_id}/pyfunc",
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
            with process(argv, serve_env, workdir / "mlflow-serve.log") as proc:
                wait_ready(f"{mlflow_url}/ping", proc, 180, workdir / "mlflow-serve.log")
                status, answer = http_json(f"{mlflow_url}/invocations", mlflow_body(sample[0]))
                if status != 200:
                    raise RuntimeError(f"mlflow serve answered {status}: {answer}")
                ours = np.array([[p[k] for k in KPI_COLUMNS] for p in flts_answer["predictions"]])
                theirs = np.array([[row[k] for k in KPI_COLUMNS] for row in answer["predictions"]])
                same = bool(np.allclose(ours, theirs, rtol=1e-9, atol=0))
                print(f"same window, same numbers from both servers: {same}", flush=True)
                results["mlflow"] = drive(
                    f"{mlflow_url}/invocations", [mlflow_body(w) for w in sample], args, workdir, proc.pid
                )
                results["mlflow"]["same_numbers"] = same
                print(describe(f"mlflow serve ({args.mlflow_workers} w)", results["mlflow"]), flush=True)

        flts = results["flts"]
        bar = flts["failures"] == 0 and flts["rps"] >= 1500 and flts["p99"] <= 0.030
        line = f"RESULT flts {summary(flts)}"
        if "mlflow" in results:
            other = results["mlflow"]
            rps_ratio = flts["rps"] / other["rps"] if other["rps"] else math.inf
            p99_ratio = flts["p99"] / other["p99"] if other["p99"] else math.inf
            bar = bar and rps_ratio >= 2.0 and p99_ratio <= 0.5 and other["same_numbers"]
            line += f" | mlflow {summary(other)} | rps_ratio={rps_ratio:.2f}x p99_ratio={p99_ratio:.2f}"
        else:
            line += " | mlflow skipped"
        print(f"{line} | bar {'met' if bar else 'NOT met'}", flush=True)
        return 0
    finally:
        local.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
