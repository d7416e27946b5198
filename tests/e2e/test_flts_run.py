"""The main job end to end: `flts run` as a newcomer runs it, and against a running stack."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest

from flts_cli.stack import StackConfig
from shared.columns import KPI_COLUMNS

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_SAMPLE = [
    "--sample-train-rows",
    "400",
    "--sample-test-rows",
    "200",
    "--epochs",
    "1",
    "--no-skill-gate",
]
STACK_VARIABLES = ("KAFKA_", "MLFLOW_", "AWS_")
STEP = pd.Timedelta(minutes=2)


@dataclass(frozen=True)
class FltsRun:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any]


def run_flts(report_dir: Path, env: dict[str, str], *extra: str, timeout_s: float = 420) -> FltsRun:
    completed = subprocess.run(
        [sys.executable, "-m", "flts_cli.main", "run", "--report-dir", str(report_dir), *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    output = completed.stdout[-3000:] + completed.stderr[-3000:]
    report_path = report_dir / "report.json"
    assert report_path.exists(), output
    report: dict[str, Any] = json.loads(report_path.read_text())
    return FltsRun(completed.returncode, completed.stdout, completed.stderr, report)


def flts_run(report_dir: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    """The report of a run that must succeed."""
    run = run_flts(report_dir, env, *extra)
    assert run.returncode == 0, (run.report.get("error"), run.stdout[-3000:] + run.stderr[-3000:])
    return run.report


def assert_no_service_left(report: dict[str, Any]) -> None:
    for name, pid in report["stages"]["services"]["detail"]["processes"].items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name


def test_main_job_on_small_sample_runs_every_stage_and_serves_under_load(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(STACK_VARIABLES)}
    report = flts_run(tmp_path / "report", env, *SMALL_SAMPLE, "--load-duration", "10s")

    assert report["status"] == "ok"
    assert all(stage["status"] == "ok" for stage in report["stages"].values()), report["stages"]
    assert set(report["models"]) == {"GRU", "LSTM", "PROPHET"}
    promoted = report["promoted"]
    assert promoted["run_id"] == report["models"][promoted["model_type"]]["run_id"]
    assert report["rows"] == {"train": 400, "test": 200}
    assert report["load_test"]["failures"] == 0
    assert report["load_test"]["requests"] > 500
    assert report["baseline"]["rmse_down"] > 0
    # Validation decided (gate off on a sample this small), and every figure is reported.
    decision = report["decision"]
    assert (decision["decision"], decision["run_id"]) == ("promoted", promoted["run_id"])
    assert decision["skill_gate"] is False and len(decision["checks"]) == 9
    for figures in report["models"].values():
        for key in ("val_rmse", "baseline_val_rmse_up", "rmse_up", "test_h30_rmse_down", "score"):
            assert figures[key] is not None, (key, figures)
    assert report["baseline"]["test_h30_rmse_up"] > 0
    for name in ("report.md", "forecast.png", "load_test.png", "logs/inference.log"):
        assert (tmp_path / "report" / name).exists(), name
    # Nothing is left running: no service process, and nothing listens on the stack's ports.
    assert_no_service_left(report)
    for endpoint in report["stages"]["infrastructure"]["detail"]["endpoints"].values():
        port = int(endpoint.rsplit(":", 1)[1].rstrip("/"))
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_new_salt_promotes_a_second_config_hash_and_same_salt_reuses_processed_data(
    tmp_path: Path, stack: StackConfig, service_env: dict[str, str]
) -> None:
    # Locust's --run-time clock starts early in its start-up, which takes seconds on a busy
    # machine: a shorter duration can end the swarm before its first request.
    # One model type is enough to show config hashes at work; the main-job test trains all three.
    short_load = ["--load-duration", "6s", "--load-users", "2", "--model-types", "GRU"]
    first = flts_run(tmp_path / "first", service_env, *SMALL_SAMPLE, *short_load, "--salt", "e2e-a")
    second = flts_run(tmp_path / "second", service_env, *SMALL_SAMPLE, *short_load, "--salt", "e2e-b")

    assert first["config_hash"] != second["config_hash"]
    assert second["promoted"]["config_hash"] == second["config_hash"]
    assert second["promoted"]["run_id"] != first["promoted"]["run_id"]
    # inference_live passes only when /model serves the run the evaluator just promoted.
    assert second["stages"]["inference_live"]["status"] == "ok"
    assert second["stages"]["preprocess"]["detail"]["reused_processed_data"] is False

    again = flts_run(tmp_path / "again", service_env, *SMALL_SAMPLE, *short_load, "--salt", "e2e-b")
    assert again["config_hash"] == second["config_hash"]
    assert again["stages"]["preprocess"]["detail"]["reused_processed_data"] is True
    assert again["stages"]["training"]["status"] == "skipped"
    assert again["promoted"]["run_id"] == second["promoted"]["run_id"]
    assert again["load_test"]["failures"] == 0


def test_failing_stage_exits_1_names_the_stage_in_report_and_terminal_and_stops_every_service(
    tmp_path: Path, service_env: dict[str, str]
) -> None:
    # A dataset without a single KPI column: the preprocess job refuses, after every service started.
    dataset = f"Broken{uuid.uuid4().hex[:6]}"
    for name in (f"{dataset}.csv", f"{dataset}_test.csv"):
        (tmp_path / name).write_text("time\n2019-01-12 17:00:00\n")
    env = {**service_env, "DATA_DIR": str(tmp_path)}
    failed = run_flts(tmp_path / "failed", env, *SMALL_SAMPLE, "--dataset", dataset)

    assert failed.returncode == 1
    report = failed.report
    assert report["status"] == "failed"
    assert report["failed_stage"] == "preprocess"
    assert report["error"].startswith("exit code ")
    assert report["stages"]["preprocess"]["status"] == "failed"
    assert report["stages"]["preprocess"]["error"] == report["error"]
    assert list(report["stages"]) == ["infrastructure", "services", "preprocess"]
    assert "flts run FAILED at preprocess: exit code" in failed.stderr
    assert "preprocess" in failed.stdout and "FAILED" in failed.stdout
    assert (tmp_path / "failed" / "report.md").exists()
    assert_no_service_left(report)


def stuck_counter_dataset(directory: Path, train_rows: int = 400, stuck_rows: int = 150) -> str:
    """A PobleSec sample whose `down` counter is stuck at one value over the last `stuck_rows` of
    the train split (test split untouched); returns the dataset name.

    The validation period is the last 15 % of the train split (60 of 400 rows), inside the stuck
    stretch, so persistence's `down` error there is exactly 0: no model can be strictly below it,
    whatever it learned, and the gate must refuse every candidate.
    """
    name = f"Stuck{uuid.uuid4().hex[:6]}"
    train = pd.read_csv(REPO_ROOT / "data" / "PobleSec.csv", nrows=train_rows)
    train.loc[train.index[-stuck_rows:], "down"] = float(train["down"].iloc[-stuck_rows - 1])
    directory.mkdir(parents=True, exist_ok=True)
    train.to_csv(directory / f"{name}.csv", index=False)
    pd.read_csv(REPO_ROOT / "data" / "PobleSec_test.csv", nrows=200).to_csv(
        directory / f"{name}_test.csv", index=False
    )
    return name


def test_refusal_fails_the_run_within_seconds_with_the_reason_in_stderr_and_report(tmp_path: Path) -> None:
    dataset = stuck_counter_dataset(tmp_path / "data")
    # Its own embedded stack: consumer groups left behind by earlier runs cannot delay the trainer.
    env = {k: v for k, v in os.environ.items() if not k.startswith(STACK_VARIABLES)}
    env["DATA_DIR"] = str(tmp_path / "data")

    refused = run_flts(
        tmp_path / "refused", env, "--dataset", dataset, "--model-types", "GRU", "--epochs", "1"
    )

    output = refused.stdout[-3000:] + refused.stderr[-3000:]
    assert refused.returncode == 1, output
    report = refused.report
    assert (report["status"], report["failed_stage"]) == ("failed", "evaluation"), output
    assert list(report["stages"]) == ["infrastructure", "services", "preprocess", "training", "evaluation"]
    # Seconds after the decision, not the stage timeout: the refusal is an answer.
    assert report["stages"]["evaluation"]["seconds"] < 15, report["stages"]
    decision = report["decision"]
    assert decision["decision"] == "refused" and decision["run_id"] is None and decision["skill_gate"]
    down = next(c for c in decision["checks"] if c["name"] == "val_rmse_down")
    assert (down["model_type"], down["baseline"], down["passed"]) == ("GRU", 0.0, False)
    assert "val_rmse_down" in decision["reason"] and "not below persistence 0" in decision["reason"]
    assert report["promoted"] is None
    assert report["error"].startswith("the evaluator refused promotion: ")
    assert decision["reason"] in report["error"]
    # The terminal says why, with the figures.
    assert "flts run FAILED at evaluation: the evaluator refused promotion:" in refused.stderr
    assert "val_rmse_down:" in refused.stderr and "vs persistence 0 FAIL" in refused.stderr
    text = (tmp_path / "refused" / "report.md").read_text()
    assert "## Decision: refused" in text and "| GRU |" in text
    assert_no_service_left(report)


def test_unknown_dataset_exits_2_at_once_naming_the_available_ones() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "flts_cli.main", "run", "--dataset", "PobleSec,NoSuchSite"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2, completed.stderr
    assert (
        "unknown dataset NoSuchSite" in completed.stderr and "ElBorn, LesCorts, PobleSec" in completed.stderr
    )


FLEET = ("PobleSec", "LesCorts", "ElBorn")


def window_body(station: str, rows: int = 10) -> dict[str, Any]:
    """A /predict body for `station`: the first window of its test split with no gap or hole."""
    test = pd.read_csv(REPO_ROOT / "data" / f"{station}_test.csv", nrows=400, parse_dates=["time"])
    for start in range(len(test) - rows):
        part = test.iloc[start : start + rows]
        if part[list(KPI_COLUMNS)].notna().all().all() and (part["time"].diff().dropna() == STEP).all():
            data: dict[str, Any] = {"ts": part["time"].dt.strftime("%Y-%m-%d %H:%M:%S").tolist()}
            data.update({name: part[name].astype(float).tolist() for name in KPI_COLUMNS})
            return {"identifier": station, "data": data, "inference_length": 1}
    raise AssertionError(f"no complete window in {station}_test.csv")


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def test_fleet_of_three_stations_goes_live_and_each_answers_with_its_own_run(tmp_path: Path) -> None:
    # Its own embedded stack; one model type keeps three stations within the CI budget.
    env = {k: v for k, v in os.environ.items() if not k.startswith(STACK_VARIABLES)}
    report_dir = tmp_path / "fleet"
    argv = [sys.executable, "-m", "flts_cli.main", "run", "--report-dir", str(report_dir)]
    argv += ["--dataset", ",".join(FLEET), *SMALL_SAMPLE, "--model-types", "GRU"]
    # --keep-running leaves the stack up after the report, so /predict can be asked per station.
    argv += ["--load-duration", "8s", "--load-users", "3", "--keep-running"]
    with (tmp_path / "output.txt").open("w") as output:
        runner = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not (report_dir / "report.md").exists():
            assert runner.poll() is None, (tmp_path / "output.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no report within 600 s"
            time.sleep(1)
        report: dict[str, Any] = json.loads((report_dir / "report.json").read_text())
        assert report["status"] == "ok", (report.get("error"), (tmp_path / "output.txt").read_text()[-3000:])
        fleet = report["fleet"]
        assert fleet["live"] == list(FLEET) and fleet["promoted"] == list(FLEET), fleet
        assert (fleet["refused"], fleet["failed"]) == ({}, {})
        assert fleet["trigger_to_all_live_seconds"] == report["trigger_to_live_seconds"] > 0
        run_ids = {name: report["stations"][name]["promoted"]["run_id"] for name in FLEET}
        assert len(set(run_ids.values())) == 3, run_ids
        assert report["load_test"]["stations"] == list(FLEET) and report["load_test"]["failures"] == 0
        assert report["load_test"]["requests"] > 0
        # Each station's claims, trainings and preprocess log are its own.
        hashes = {report["stations"][name]["config_hash"] for name in FLEET}
        assert len(hashes) == 3
        for name in FLEET:
            assert (report_dir / "logs" / f"preprocess-{name}.log").exists(), name
        url = report["stages"]["services"]["detail"]["inference_url"]
        for name in FLEET:
            answer = post_json(f"{url}/predict", window_body(name))
            assert (answer["identifier"], answer["run_id"]) == (name, run_ids[name]), answer
            assert len(answer["predictions"]) == 1
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=90) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert_no_service_left(report)
