"""The main job end to end: `flts run` as a newcomer runs it, and against a running stack."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from flts_cli.stack import StackConfig

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
    for name in ("report.md", "forecast.png", "load_test.png", "logs/inference.log"):
        assert (tmp_path / "report" / name).exists(), name
    # Nothing is left running: no service process, and nothing listens on the stack's ports.
    assert_no_service_left(report)
    for endpoint in report["stages"]["infrastructure"]["detail"]["endpoints"].values():
        port = int(endpoint.rsplit(":", 1)[1].rstrip("/"))
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"


def test_new_salt_promotes_a_second_config_hash_and_same_salt_reuses_processed_data(
    tmp_path: Path, stack: StackConfig, service_env: dict[str, str]
) -> None:
    # Locust's --run-time clock starts early in its start-up, which takes seconds on a busy
    # machine: a shorter duration can end the swarm before its first request.
    short_load = ["--load-duration", "6s", "--load-users", "2"]
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
    # No data/NoSuchSite.csv: the preprocess job refuses, after every service has started.
    failed = run_flts(tmp_path / "failed", service_env, *SMALL_SAMPLE, "--dataset", "NoSuchSite")

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
