"""The day-two sequence of a new user: `flts up --detach`, `flts run`, `flts down`, `flts up
--detach`, `flts run` again with the same data and defaults, ends with a promoted model served.

The embedded S3 server and broker keep nothing across a restart; neither may MLflow, or its runs
would point at artifacts that died with the old S3 server (docs: README, `flts up`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flts_cli.stack import MLFLOW_DB, PREVIOUS_STATE_DIR, free_ports, stop_from_state, venv_bin
from tests.e2e.test_flts_run import REPO_ROOT, SMALL_SAMPLE, STACK_VARIABLES, flts_run

# One model type and a short swarm: the restart is under test, not the models or the load. (Locust
# starts its --run-time clock early in its start-up: on a busy machine 6 s can end before a request.)
SHORT = [*SMALL_SAMPLE, "--model-types", "GRU", "--load-duration", "10s", "--load-users", "2"]


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The user's `.flts`; whatever stack a failing test leaves there is stopped afterwards."""
    path = tmp_path / ".flts"
    yield path
    stop_from_state(path)


def flts(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_bin("flts"), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
    )


def up_detached(ports: list[int], state_dir: Path) -> tuple[str, dict[str, str]]:
    """`flts up --detach` on the given ports; its stdout and the environment `source stack.env` gives."""
    kafka, s3, mlflow = (str(port) for port in ports)
    started = flts(
        "up", "--detach", "--kafka-port", kafka, "--s3-port", s3, "--mlflow-port", mlflow,
        "--state-dir", str(state_dir),
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(STACK_VARIABLES)}
    for line in (state_dir / "stack.env").read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    return started.stdout, env


def down(state_dir: Path) -> None:
    stopped = flts("down", "--state-dir", str(state_dir))
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped: "), stopped.stdout


def promoted_and_served(report: dict[str, Any]) -> str:
    assert report["status"] == "ok", report.get("error")
    assert report["stages"]["inference_live"]["status"] == "ok", report["stages"]["inference_live"]
    assert report["load_test"]["failures"] == 0
    run_id: str = report["promoted"]["run_id"]
    return run_id


# Two whole `flts run`s on two stacks started with `flts up`: 3 to 8 minutes on 2 cores, more than
# the default suite's time budget leaves. Run with `pytest -m slow` (docs/RELIABILITY.md).
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_run_after_flts_down_and_up_retrains_and_serves_a_promoted_model(
    tmp_path: Path, state_dir: Path
) -> None:
    ports = free_ports(3)
    first_stdout, first_env = up_detached(ports, state_dir)
    assert "previous stack" not in first_stdout, "a new state dir has nothing to move aside"
    earlier = flts_run(tmp_path / "first", first_env, *SHORT)
    first = promoted_and_served(earlier)
    down(state_dir)
    assert (state_dir / MLFLOW_DB).exists(), "the stack's MLflow database was in the state dir"

    second_stdout, second_env = up_detached(ports, state_dir)
    moved = state_dir / PREVIOUS_STATE_DIR / MLFLOW_DB
    assert f"moved the previous stack's MLflow database to {moved}" in second_stdout
    assert moved.exists()
    # The new stack remembers nothing of the old one: not even the run the first run promoted.
    with pytest.raises(MlflowException) as gone:
        MlflowClient(second_env["MLFLOW_TRACKING_URI"]).get_run(first)
    assert gone.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    report = flts_run(tmp_path / "second", second_env, *SHORT)
    second = promoted_and_served(report)
    assert second != first
    # The same data and defaults: the same config hash the old MLflow database knew as trained.
    assert report["config_hash"] == earlier["config_hash"] == report["promoted"]["config_hash"]
    # Trained again from data processed again, not acknowledged from a memory of the old stack.
    assert report["stages"]["preprocess"]["detail"]["reused_processed_data"] is False
    assert report["stages"]["training"]["status"] == "ok"
    assert report["models"]["GRU"]["run_id"] == second
    down(state_dir)
