"""Benchmark: a fleet of N stations through one pipeline and one inference process.

For each N in --stations (default 3,30,100), on a fresh embedded stack (broker, S3, MLflow):
1. N datasets in a temporary data folder: the three real stations and N-3 synthetic ones, named
   `syn<k>-<source>` so they are never mistaken for real cells. A synthetic station is a copy of a
   real one with its traffic volumes (`down`, `up`) rescaled by a seeded factor in [0.5, 2] and its
   timestamps shifted by a whole number of days. Every station, real ones included, is cut to the
   same length (--train-rows of the train CSV's tail, --test-rows of the test CSV's head) so a
   run stays within minutes;
2. the services as processes, as `flts run` starts them: one trainer per model type
   (--model-types), the evaluator expecting those types, one inference process (one worker)
   following every station, configured by default (windows of different stations predicted
   together in stacks, BATCH_ACROSS_STATIONS=true);
3. trigger: the preprocess job once per station (its code, in this process, one run per station
   as a Job per station would), all claims published in a burst;
4. wait until every station is decided (promoted or refused) and every promoted one is served at
   its promoted run (inference `GET /model`);
5. measure: trigger -> all decided and live; trainer throughput (stations per minute of that
   span); inference RSS (before any model, and with N loaded); then start a second inference
   process predicting each station's windows on its own (BATCH_ACROSS_STATIONS=false), wait
   until it serves every champion too, and load both with wrk,
   --connections connections for --duration seconds, POSTs spread round robin over every live
   station (each body names its station), --rounds times on each process in turn (so a change
   in what else the machine does falls on both): req/s, p50, p99 and server CPU per request
   (user + system CPU of the process over the round / requests) as the median over the rounds,
   failures (non-2xx + socket errors) summed.

The last line says whether the targets hold at the largest N run, for the default process:
served from one inference process under 600 MiB RSS, >= 1,500 req/s at p99 <= 30 ms over all
stations, 0 failures.

    .venv/bin/python bench/fleet.py [--stations 3,30,100] [--model-types GRU,LSTM,PROPHET]
        [--train-rows 2000] [--test-rows 400] [--epochs 3] [--duration 15] [--rounds 3]
        [--connections 20]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import support
from flts_cli.stack import LocalStack, StackConfig, free_port, free_ports
from preprocess_container.job import ensure_job_topics, run_job
from preprocess_container.settings import PreprocessSettings
from shared.data import KPI_COLUMNS
from shared.events import DecisionOutcome, PromotionDecision
from shared.kafka import EventProducer
from shared.promotion import latest_decision, load_decisions
from shared.storage import ObjectStore

REAL_STATIONS = ("PobleSec", "LesCorts", "ElBorn")
TRAINER_MODULES = {"GRU": "train_container", "LSTM": "train_container", "PROPHET": "nonml_container"}
WINDOW_ROWS = 10
BODIES_PER_STATION = 4
TARGET_RSS_MIB = 600.0
TARGET_RPS = 1500.0
TARGET_P99_S = 0.030
# The inference processes compared: name -> BATCH_ACROSS_STATIONS. The first is the default.
VARIANTS = {"stacked": "true", "per model": "false"}


@dataclass
class FleetResult:
    stations: int
    trigger_to_live_s: float = math.nan
    stations_per_minute: float = math.nan
    promoted: dict[str, int] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    rss_empty_mib: float = math.nan
    rss_loaded_mib: float = math.nan
    # variant -> the medians of its rounds (rps, p50, p99, cpu_ms_per_request), failures summed
    load: dict[str, dict[str, Any]] = field(default_factory=dict)
    stations_loaded: int = 0
    # stations decided before every type reported (PROMOTION_TIMEOUT_S), and follow-up decisions
    decided_early: int = 0
    follow_ups: int = 0


def make_datasets(folder: Path, count: int, train_rows: int, test_rows: int, seed: int) -> list[str]:
    """`count` station CSV pairs in `folder`; returns their names, real stations first."""
    rng = random.Random(seed)
    sources = {
        name: (
            pd.read_csv(support.DATA / f"{name}.csv").tail(train_rows),
            pd.read_csv(support.DATA / f"{name}_test.csv").head(test_rows),
        )
        for name in REAL_STATIONS
    }
    names: list[str] = []
    for k in range(count):
        source = REAL_STATIONS[k % len(REAL_STATIONS)]
        train, test = sources[source]
        if k < len(REAL_STATIONS):
            name = source
        else:
            name = f"syn{k:03d}-{source}"
            factor = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
            shift = pd.Timedelta(days=rng.randint(1, 60))
            train, test = (_synthetic(frame, factor, shift) for frame in (train, test))
        train.to_csv(folder / f"{name}.csv", index=False)
        test.to_csv(folder / f"{name}_test.csv", index=False)
        names.append(name)
    return names


def _synthetic(frame: pd.DataFrame, factor: float, shift: pd.Timedelta) -> pd.DataFrame:
    out = frame.copy()
    for column in ("down", "up"):
        out[column] = out[column] * factor
    out["time"] = (pd.to_datetime(out["time"]) + shift).dt.strftime("%Y-%m-%d %H:%M:%S")
    return out


def trigger(names: list[str], env: dict[str, str], data_dir: Path, store: ObjectStore) -> dict[str, str]:
    """The preprocess job for every station; returns station -> config hash."""
    base = {**env, "DATA_DIR": str(data_dir), "EXTRA_HASH_SALT": "fleet-bench"}
    first = PreprocessSettings.model_validate({**base, "DATASET_NAME": names[0]})
    ensure_job_topics(first)
    producer = EventProducer(first.KAFKA_BOOTSTRAP_SERVERS, client_id="bench-fleet")
    hashes: dict[str, str] = {}
    try:
        for name in names:
            settings = PreprocessSettings.model_validate({**base, "DATASET_NAME": name})
            hashes[name] = run_job(settings, store, producer).config_hash
    finally:
        producer.close()
    return hashes


def wait_decided_and_live(
    inference_url: str, store: ObjectStore, hashes: dict[str, str], timeout_s: float
) -> dict[str, PromotionDecision]:
    """Every station's decision in force, once each station has one and the inference process
    serves every promoted station at its promoted run. Decisions are read again on every poll: a
    type that reports after the evaluator's timeout gets a follow-up decision, which may promote a
    newer run than the first decision did."""
    deadline = time.monotonic() + timeout_s
    decided: dict[str, PromotionDecision] = {}
    unserved: list[str] = []
    while time.monotonic() < deadline:
        for name, config_hash in hashes.items():
            decision = latest_decision(store, "model-promotion", name, config_hash)
            if decision is not None:
                decided[name] = decision
        if len(decided) == len(hashes):
            promoted = {n: d.run_id for n, d in decided.items() if d.decision is DecisionOutcome.PROMOTED}
            status, info = support.http_json(f"{inference_url}/model")
            served = info.get("models", {}) if status == 200 and isinstance(info, dict) else {}
            unserved = sorted(
                n for n, run_id in promoted.items() if served.get(n, {}).get("run_id") != run_id
            )
            if not unserved:
                return decided
        time.sleep(1.0)
    missing = sorted(set(hashes) - set(decided))
    raise RuntimeError(
        f"not decided and live within {timeout_s:.0f}s; undecided: {missing[:10]}; "
        f"promoted but not served: {unserved[:10]}"
    )


def bodies_for(names: list[str], data_dir: Path) -> list[bytes]:
    """BODIES_PER_STATION windows per station, interleaved so round robin spreads them evenly."""
    per_station: list[list[bytes]] = []
    for name in names:
        test = pd.read_csv(data_dir / f"{name}_test.csv").dropna()
        bodies = []
        for b in range(BODIES_PER_STATION):
            window = test.iloc[b * WINDOW_ROWS : (b + 1) * WINDOW_ROWS]
            data: dict[str, list[Any]] = {"ts": window["time"].tolist()}
            for column in KPI_COLUMNS:
                data[column] = window[column].astype(float).tolist()
            body = {"identifier": name, "data": data, "inference_length": 1}
            bodies.append(json.dumps(body).encode())
        per_station.append(bodies)
    return [bodies[b] for b in range(BODIES_PER_STATION) for bodies in per_station]


def rss_mib(pid: int) -> float:
    process = psutil.Process(pid)
    total = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
    return float(total) / 2**20


def start_inference(services: ExitStack, env: dict[str, str], log: Path, across: str) -> tuple[str, int]:
    """An inference process (one worker) following every station; (its URL, its pid) once healthy."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    variant_env = {
        **env,
        "INFERENCE_HOST": "127.0.0.1",
        "INFERENCE_PORT": str(port),
        "BATCH_ACROSS_STATIONS": across,
    }
    inference = services.enter_context(
        support.process([sys.executable, "-m", "inference_container"], variant_env, log)
    )
    support.wait_ready(lambda: support.answers_200(f"{url}/healthz"), inference, 120, log)
    return url, inference.pid


def measure(
    urls: dict[str, tuple[str, int]], bodies: list[bytes], args: argparse.Namespace, workdir: Path
) -> dict[str, dict[str, Any]]:
    """wrk on each variant in turn, --rounds times; per variant the medians and summed failures."""
    for url, _ in urls.values():
        support.run_wrk(f"{url}/predict", bodies, args.connections, 3, args.threads, workdir)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
    for _ in range(args.rounds):
        for name, (url, pid) in urls.items():
            cpu_before = support.group_cpu_seconds(pid)
            result = support.run_wrk(
                f"{url}/predict", bodies, args.connections, args.duration, args.threads, workdir
            )
            result["cpu_ms_per_request"] = (
                1000.0 * (support.group_cpu_seconds(pid) - cpu_before) / max(1, result["requests"])
            )
            rounds[name].append(result)
    merged: dict[str, dict[str, Any]] = {}
    for name, found in rounds.items():
        merged[name] = {
            key: statistics.median(r[key] for r in found)
            for key in ("rps", "p50", "p99", "cpu_ms_per_request")
        }
        merged[name]["failures"] = sum(r["failures"] for r in found)
        merged[name]["requests"] = sum(r["requests"] for r in found)
    return merged


def run_fleet(count: int, args: argparse.Namespace, workdir: Path) -> FleetResult:
    result = FleetResult(stations=count)
    data_dir = workdir / f"data-{count}"
    data_dir.mkdir()
    names = make_datasets(data_dir, count, args.train_rows, args.test_rows, seed=count)
    kafka_port, s3_port, mlflow_port = free_ports(3)
    config = StackConfig(
        kafka_port=kafka_port, s3_port=s3_port, mlflow_port=mlflow_port, state_dir=workdir / f"stack-{count}"
    )
    stack = LocalStack(config)
    stack.start()
    try:
        env = {**os.environ, **config.service_env(), "PYTHONPATH": str(support.REPO), "LOG_LEVEL": "WARNING"}
        store = ObjectStore(config.s3_url, config.access_key, config.secret_key)
        eval_port = free_port()
        with ExitStack() as services:
            for model_type in args.model_types:
                services.enter_context(
                    support.process(
                        [sys.executable, "-m", TRAINER_MODULES[model_type]],
                        {**env, "MODEL_TYPE": model_type, "EPOCHS": str(args.epochs)},
                        workdir / f"train-{model_type}-{count}.log",
                    )
                )
            services.enter_context(
                support.process(
                    [sys.executable, "-m", "eval_container"],
                    {
                        **env,
                        "HEALTH_PORT": str(eval_port),
                        "EXPECTED_MODEL_TYPES": ",".join(args.model_types),
                    },
                    workdir / f"evaluator-{count}.log",
                )
            )
            # The default process follows the pipeline from the start, as `flts run` starts it; the
            # one compared with it starts once every station is live, so the pipeline's figures
            # are those of one inference process.
            default = next(iter(VARIANTS))
            urls = {
                default: start_inference(services, env, workdir / f"inference-{count}.log", VARIANTS[default])
            }
            result.rss_empty_mib = rss_mib(urls[default][1])
            started = time.monotonic()
            hashes = trigger(names, env, data_dir, store)
            decided = wait_decided_and_live(urls[default][0], store, hashes, args.timeout)
            result.trigger_to_live_s = time.monotonic() - started
            result.stations_per_minute = count / (result.trigger_to_live_s / 60.0)
            result.promoted = dict(
                Counter(
                    d.model_type.value for d in decided.values() if d.decision == "promoted" and d.model_type
                )
            )
            result.refused = sorted(n for n, d in decided.items() if d.decision != "promoted")
            live = [n for n in names if n not in result.refused]
            for name, config_hash in hashes.items():
                history = load_decisions(store, "model-promotion", name, config_hash)
                result.decided_early += bool(history and history[0].missing_model_types)
                result.follow_ups += max(0, len(history) - 1)
            time.sleep(2.0)  # let the last swap's garbage go before reading the footprint
            result.rss_loaded_mib = rss_mib(urls[default][1])
            result.stations_loaded = len(live)
            for variant, across in list(VARIANTS.items())[1:]:
                urls[variant] = start_inference(
                    services, env, workdir / f"inference-{count}-{across}.log", across
                )
                wait_decided_and_live(urls[variant][0], store, hashes, args.timeout)
            result.load = measure(urls, bodies_for(live, data_dir), args, workdir)
    finally:
        stack.stop()
    return result


def describe(result: FleetResult) -> str:
    promoted = ", ".join(f"{t} {n}" for t, n in sorted(result.promoted.items())) or "none"
    # A synthetic station is named syn<k>-<source>: count refusals by the real station behind them.
    sources = Counter(name.rsplit("-", 1)[-1] for name in result.refused)
    refused_by_source = ", ".join(f"{source} {n}" for source, n in sorted(sources.items())) or "none"
    lines = [
        f"N={result.stations:>3}  trigger->all live {result.trigger_to_live_s:7.1f} s  "
        f"trainers {result.stations_per_minute:5.1f} stations/min  champions: {promoted}; "
        f"refused {len(result.refused)} ({refused_by_source})  "
        f"decided before every type reported {result.decided_early} "
        f"(follow-ups {result.follow_ups})  inference RSS {result.rss_empty_mib:.0f} MiB empty -> "
        f"{result.rss_loaded_mib:.0f} MiB with {result.stations - len(result.refused)} models  "
        f"load over {result.stations_loaded} stations:"
    ]
    for variant, load in result.load.items():
        cpu = load.get("cpu_ms_per_request", 0)
        lines.append(
            f"    {variant:<10} {load.get('rps', 0):6.0f} req/s  p50 {load.get('p50', 0) * 1000:5.1f} ms  "
            f"p99 {load.get('p99', 0) * 1000:5.1f} ms  server cpu/request {cpu:.2f} ms  "
            f"failures {load.get('failures', 0)}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stations", default="3,30,100", help="comma list of fleet sizes")
    parser.add_argument("--model-types", default="GRU,LSTM,PROPHET")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--test-rows", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per process and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns of load on each inference process")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for a fleet")
    args = parser.parse_args()
    args.model_types = [t.strip().upper() for t in args.model_types.split(",") if t.strip()]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (Debian package wrk)")
    sizes = [int(n) for n in args.stations.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="flts-bench-fleet-"))
    print(
        f"fleet bench: stations {sizes}, models {args.model_types}, {args.train_rows}/{args.test_rows} rows, "
        f"{args.epochs} epochs; logs in {workdir}"
    )
    results = []
    for count in sizes:
        results.append(run_fleet(count, args, workdir))
        print(describe(results[-1]), flush=True)
    largest = results[-1]
    load = largest.load[next(iter(VARIANTS))]
    holds = (
        largest.rss_loaded_mib < TARGET_RSS_MIB
        and load.get("rps", 0) >= TARGET_RPS
        and load.get("p99", math.inf) <= TARGET_P99_S
        and load.get("failures", 1) == 0
    )
    print(
        f"targets at N={largest.stations} ({next(iter(VARIANTS))}): "
        f"RSS {largest.rss_loaded_mib:.0f} MiB (< {TARGET_RSS_MIB:.0f}), "
        f"{load.get('rps', 0):.0f} req/s (>= {TARGET_RPS:.0f}), p99 {load.get('p99', 0) * 1000:.1f} ms "
        f"(<= {TARGET_P99_S * 1000:.0f}), failures {load.get('failures', 0)} (0): "
        f"{'HOLD' if holds else 'DO NOT HOLD'}"
    )
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
