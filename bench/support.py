"""What the benchmarks share (bench/inference.py, bench/connections.py, bench/fleet.py,
bench/soak.py), none of it from tests/:

- a temporary embedded stack with one GRU run promoted, and the environment of an inference
  process serving it;
- a GRU run logged to MLflow as the trainer logs it (the MLflow model at `GRU/`);
- its promotion, built and written by the evaluator's own code (shared.scoring, shared.promotion),
  and its registration as the `champion` of `flts-<identifier>`, as the evaluator registers it;
- a server process in its own session, stopped with its children; HTTP probes; the CPU time its
  process group used; wrk as the load generator.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from flts_cli.stack import LocalStack, StackConfig, free_port
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, MinMaxScaler
from shared.events import ModelType, PromotionPointer, utcnow
from shared.kafka import EventProducer
from shared.mlflow_utils import ensure_experiment
from shared.model_runtime.networks import ModelSpec, build_model, save_model
from shared.model_runtime.pyfunc import save_mlflow_model, window_frame
from shared.promotion import write_current_pointers
from shared.scoring import DEFAULT_WEIGHTS, Candidate, build_pointer, model_uri, rank
from shared.storage import ObjectStore

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
PROMOTION_BUCKET = "model-promotion"
PROMOTION_TOPIC = "model-selected"


@dataclass(frozen=True)
class BenchRun:
    """A logged run; `artifacts` holds the local copy of what was logged."""

    run_id: str
    config_hash: str
    model_type: ModelType
    artifacts: Path


def log_trainer_run(
    stack: StackConfig, root: Path, *, identifier: str, spec: ModelSpec, seed: int = 0
) -> BenchRun:
    """An untrained network with seeded weights and the scaler fit on the PobleSec train split,
    logged to the `Default` experiment as the GRU/LSTM trainer lays a run out."""
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    scaler = MinMaxScaler.fit(pd.read_csv(DATA / "PobleSec.csv", usecols=list(KPI_COLUMNS)))
    config_hash = hashlib.sha256(f"bench-{identifier}-{seed}".encode()).hexdigest()
    meta = {
        "config_hash": config_hash,
        "dataset": "PobleSec",
        "identifier": identifier,
        "columns": list(FEATURE_COLUMNS),
        "scaler": scaler.to_dict(),
        "step_seconds": 120,
    }
    type_name = spec.model_type
    test = pd.read_csv(DATA / "PobleSec_test.csv", parse_dates=["time"]).iloc[: spec.input_seq_len]
    save_mlflow_model(
        root / type_name,
        model_type=type_name,
        input_seq_len=spec.input_seq_len,
        save_model=lambda directory: save_model(model, directory),
        scaler=scaler,
        meta=meta,
        input_example=window_frame(test["time"].to_numpy(), test[list(KPI_COLUMNS)].to_numpy()),
    )
    client = MlflowClient(stack.mlflow_url)
    tags = {"config_hash": config_hash, "model_type": type_name, "identifier": identifier}
    run_id = client.create_run(
        ensure_experiment(client, "Default"), run_name=type_name, tags=tags
    ).info.run_id
    client.log_param(run_id, "input_sequence_length", spec.input_seq_len)
    client.log_artifacts(run_id, str(root / type_name), type_name)
    client.set_terminated(run_id)
    return BenchRun(run_id, config_hash, ModelType(type_name), root)


def promote(
    stack: StackConfig,
    run: BenchRun,
    identifier: str,
    *,
    age_s: float = 0.0,
    producer: EventProducer | None = None,
) -> PromotionPointer:
    """Promote `run` as the evaluator would had it won alone (placeholder metrics): the live
    pointers in the promotion bucket, then, given a producer, the pointer on `model-selected`."""
    winner = Candidate(
        run.model_type,
        run.run_id,
        "Default",
        start_time=0,
        metrics={"val_rmse": 0.1, "val_mae": 0.05, "val_mse": 0.01},
    )
    pointer = build_pointer(
        identifier=identifier,
        config_hash=run.config_hash,
        winner=winner,
        scoreboard=rank([winner]),
        weights=DEFAULT_WEIGHTS,
        timestamp=utcnow() - timedelta(seconds=age_s),
    )
    store = ObjectStore(stack.s3_url, stack.access_key, stack.secret_key)
    write_current_pointers(store, PROMOTION_BUCKET, pointer)
    if producer is not None:
        producer.publish(PROMOTION_TOPIC, identifier, pointer)
    return pointer


def register_champion(stack: StackConfig, run: BenchRun, identifier: str) -> str:
    """Register `run`'s model as the evaluator does (a version whose source is `runs:/<id>/<TYPE>`,
    aliased `champion`); returns the `models:/` URI of the alias."""
    client = MlflowClient(stack.mlflow_url)
    name = f"flts-{identifier}"
    client.create_registered_model(name)
    source = model_uri(run.run_id, run.model_type)
    version = client.create_model_version(name, source=source, run_id=run.run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    return f"models:/{name}@champion"


@dataclass(frozen=True)
class PromotedStack:
    """A running embedded stack in `workdir` whose station `identifier` has `run` promoted."""

    workdir: Path
    stack: StackConfig
    run: BenchRun
    identifier: str

    def inference_env(self, port: int, workers: int, **extra: str) -> dict[str, str]:
        """The environment of `python -m inference_container` serving this station on `port`."""
        return {
            **os.environ,
            **self.stack.service_env(),
            "PYTHONPATH": str(REPO),
            "IDENTIFIERS": self.identifier,
            "INFERENCE_HOST": "127.0.0.1",
            "INFERENCE_PORT": str(port),
            "WORKERS": str(workers),
            "LOG_LEVEL": "WARNING",
            **extra,
        }


@contextlib.contextmanager
def promoted_gru_stack(prefix: str) -> Iterator[PromotedStack]:
    """Start the embedded stack on free ports in a new temporary folder, log one GRU run the way
    the trainer does and promote it; on exit stop the stack and delete the folder."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    stack = StackConfig(
        kafka_port=free_port(), s3_port=free_port(), mlflow_port=free_port(), state_dir=workdir / "stack"
    )
    local = LocalStack(stack)
    print(f"starting the stack in {workdir} ...", flush=True)
    local.start()
    try:
        identifier = f"bench-{os.getpid()}"
        run = log_trainer_run(stack, workdir / "artifacts", identifier=identifier, spec=ModelSpec("GRU"))
        promote(stack, run, identifier)
        yield PromotedStack(workdir, stack, run, identifier)
    finally:
        local.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def http_json(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    """(status, parsed JSON or text) of a GET, or of a JSON POST when `body` is given; (0, None)
    when nothing answers."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError:  # URLError is one
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def answers_200(url: str) -> bool:
    return http_json(url, timeout=2.0)[0] == 200


def wait_ready(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout_s: float, log: Path, streak: int = 1
) -> None:
    """Until `ready()` holds `streak` times in a row; fails at once if the server exits."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        seen = seen + 1 if ready() else 0
        if seen >= streak:
            return
        time.sleep(0.05 if seen else 0.5)
    raise RuntimeError(f"server not ready after {timeout_s:.0f}s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` in a session of its own (its pid is the process group of it and its children),
    output to `log`; on exit SIGTERM to the group, SIGKILL after 15 s."""
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


# -- load generator (wrk) ------------------------------------------------------------------------


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unknown wrk duration {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(f"no {pattern!r} in the wrk report: {text[-1000:]}")
    return match.group(1)


def run_wrk(
    url: str, bodies: list[bytes], connections: int, duration: int, threads: int, workdir: Path
) -> dict[str, Any]:
    """`wrk` POSTing `bodies` round robin (so an interleaved list spreads requests evenly over what
    the bodies name); rps, p50/p99 in seconds, failures (non-2xx and socket errors), requests."""
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
    rps = float(_find(r"Requests/sec:\s+([\d.]+)", out))
    p50 = _seconds(_find(r"\s50%\s+(\S+)", out))
    p99 = _seconds(_find(r"\s99%\s+(\S+)", out))
    total = int(_find(r"(\d+) requests in", out))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failures = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        failures += sum(int(g) for g in socket_errors.groups())
    return {"rps": rps, "p50": p50, "p99": p99, "failures": failures, "requests": total, "tool": "wrk"}
