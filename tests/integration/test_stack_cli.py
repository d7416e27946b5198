"""`flts up` / `flts down` as a user runs them: real subprocesses on free ports."""

from __future__ import annotations

import json
import queue
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from confluent_kafka.admin import AdminClient
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flts_cli.stack import HOST, MLFLOW_BUCKET, TOPICS, check_port_free, free_ports, stop_from_state, venv_bin
from shared.events import dlq_topic
from shared.mlflow_utils import mlflow_answers
from shared.storage import ObjectStore

START_TIMEOUT_S = 120.0


def flts() -> str:
    return venv_bin("flts")


def port_args(kafka: int, s3: int, mlflow: int, state_dir: Path) -> list[str]:
    return [
        "--kafka-port",
        str(kafka),
        "--s3-port",
        str(s3),
        "--mlflow-port",
        str(mlflow),
        "--state-dir",
        str(state_dir),
    ]


def living(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Processes still running; a zombie has exited and only waits for its parent to reap it."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


def mentioning_ports(*ports: int) -> list[psutil.Process]:
    """Running processes whose command line names one of `ports`: what a stack of ours left behind,
    including grandchildren started after we last listed the descendants."""
    wanted = {str(port) for port in ports}
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(
            arg in wanted or arg.endswith(tuple(f":{p}" for p in wanted)) for arg in cmdline
        ):
            found.append(process)
    return found


def kill_all(processes: list[psutil.Process]) -> None:
    for process in living(processes):
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue


@pytest.fixture
def stack_state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state dir whose detached stack, if a failing test left one, is stopped afterwards."""
    state_dir = tmp_path / "state"
    yield state_dir
    stop_from_state(state_dir)


def assert_stack_serves(kafka: int, s3: int, mlflow: int, state_dir: Path) -> None:
    """Topics, buckets and the MLflow REST API are there, and a run's artifact lands in S3."""
    state = json.loads((state_dir / "stack.json").read_text())
    assert stat.S_IMODE((state_dir / "stack.json").stat().st_mode) == 0o600, "the state file holds keys"
    env = state["env"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"{HOST}:{kafka}"

    topics = AdminClient({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]}).list_topics(timeout=10).topics
    # The evaluator's answers (refusals included) have a topic before any service starts.
    assert {"model-selected", "promotion-decisions"} <= set(TOPICS)
    for topic in TOPICS:
        assert topic in topics and dlq_topic(topic) in topics

    tracking_uri = f"http://{HOST}:{mlflow}"
    assert mlflow_answers(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("Default")
    assert experiment is not None
    run = client.create_run(experiment.experiment_id, run_name="stack-cli-test")
    client.log_metric(run.info.run_id, "test_rmse", 0.25)
    artifact = state_dir.parent / "note.txt"
    artifact.write_text("stored through the MLflow server")
    client.log_artifact(run.info.run_id, str(artifact), artifact_path="notes")
    client.set_terminated(run.info.run_id)

    store = ObjectStore(f"http://{HOST}:{s3}", env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    keys = [
        k for k in store.list_keys(MLFLOW_BUCKET) if k.endswith(f"{run.info.run_id}/artifacts/notes/note.txt")
    ]
    assert len(keys) == 1, f"artifact not in s3://{MLFLOW_BUCKET}/"
    assert store.get_bytes(MLFLOW_BUCKET, keys[0]) == b"stored through the MLflow server"
    logged = client.get_run(run.info.run_id)
    assert logged.data.metrics["test_rmse"] == 0.25


def test_flts_up_serves_all_three_and_sigterm_leaves_no_process_behind(stack_state_dir: Path) -> None:
    kafka, s3, mlflow = free_ports(3)
    proc = subprocess.Popen(
        [flts(), "up", *port_args(kafka, s3, mlflow, stack_state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None

    def pump() -> None:
        for line in stdout:
            lines.put(line.rstrip())

    threading.Thread(target=pump, daemon=True).start()
    descendants: list[psutil.Process] = []
    try:
        printed: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while "running; Ctrl-C to stop" not in printed:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and proc.poll() is None, f"flts up did not start: {printed}"
            try:
                printed.append(lines.get(timeout=min(remaining, 1.0)))
            except queue.Empty:
                continue
        assert f" kafka: {HOST}:{kafka}" in printed
        assert f"    s3: http://{HOST}:{s3}" in printed
        assert f"mlflow: http://{HOST}:{mlflow}" in printed

        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert len(descendants) >= 3, "broker, S3 server and MLflow server run as processes"

        assert_stack_serves(kafka, s3, mlflow, stack_state_dir)

        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        rc = proc.wait(timeout=60)
        stop_s = time.monotonic() - signalled
        survivors = living(descendants)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all(descendants)

    assert rc == 0, stderr.read()[-2000:]
    assert survivors == [], "a child of flts up survived SIGTERM"
    assert mentioning_ports(kafka, s3, mlflow) == []
    assert stop_s < 30
    assert not (stack_state_dir / "stack.json").exists()
    for port in (kafka, s3, mlflow):
        check_port_free(port, "released port")


def test_flts_up_with_a_port_in_use_fails_fast_naming_the_port(stack_state_dir: Path) -> None:
    kafka, s3, mlflow = free_ports(3)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((HOST, mlflow))
        squatter.listen()
        started = time.monotonic()
        result = subprocess.run(
            [flts(), "up", *port_args(kafka, s3, mlflow, stack_state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        elapsed = time.monotonic() - started

    assert result.returncode != 0
    assert f"port {mlflow} for MLflow server" in result.stderr
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 15, "a busy port must be reported before anything starts, not after a timeout"
    assert not (stack_state_dir / "stack.json").exists()
    for port in (kafka, s3):
        check_port_free(port, "untouched port")


def test_flts_up_detach_returns_with_the_stack_running_and_flts_down_stops_it(stack_state_dir: Path) -> None:
    kafka, s3, mlflow = free_ports(3)
    started = subprocess.run(
        [flts(), "up", "--detach", *port_args(kafka, s3, mlflow, stack_state_dir)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    assert f"mlflow: http://{HOST}:{mlflow}" in started.stdout
    recorded = json.loads((stack_state_dir / "stack.json").read_text())["processes"]
    assert [p["name"] for p in recorded] == ["s3", "kafka", "mlflow"]
    processes = [psutil.Process(p["pid"]) for p in recorded]
    processes += [c for p in processes for c in p.children(recursive=True)]
    try:
        assert len(living(processes)) >= 3, "the stack outlives the detached `flts up`"
        assert mlflow_answers(f"http://{HOST}:{mlflow}")
        env_file = (stack_state_dir / "stack.env").read_text()
        assert f"export MLFLOW_TRACKING_URI=http://{HOST}:{mlflow}\n" in env_file

        # A second stack on other ports must not take over the state dir (and orphan this one).
        other_kafka, other_s3, other_mlflow = free_ports(3)
        second = subprocess.run(
            [flts(), "up", "--detach", *port_args(other_kafka, other_s3, other_mlflow, stack_state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "is still running from" in second.stderr
        assert json.loads((stack_state_dir / "stack.json").read_text())["processes"] == recorded

        down = subprocess.run(
            [flts(), "down", "--state-dir", str(stack_state_dir)], capture_output=True, text=True, timeout=60
        )
        survivors = living(processes)
    finally:
        kill_all(processes)

    assert down.returncode == 0, down.stderr[-2000:]
    assert down.stdout.strip() == "stopped: s3, kafka, mlflow"
    assert survivors == [], "a process of the detached stack survived `flts down`"
    assert not (stack_state_dir / "stack.json").exists()
    assert not (stack_state_dir / "stack.env").exists()
    for port in (kafka, s3, mlflow):
        check_port_free(port, "released port")

    again = subprocess.run(
        [flts(), "down", "--state-dir", str(stack_state_dir)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0
    assert again.stdout.strip() == "no detached stack found"


def test_sigterm_while_flts_up_is_starting_stops_what_had_started(stack_state_dir: Path) -> None:
    kafka, s3, mlflow = free_ports(3)
    proc = subprocess.Popen(
        [flts(), "up", *port_args(kafka, s3, mlflow, stack_state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[int, psutil.Process] = {}
    try:
        # The MLflow server is the last and slowest to start: signal once it exists, before it answers.
        deadline = time.monotonic() + START_TIMEOUT_S
        while not any("mlflow" in " ".join(p.cmdline()) for p in living(list(seen.values()))):
            assert time.monotonic() < deadline and proc.poll() is None, "flts up never started MLflow"
            for child in psutil.Process(proc.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        rc = proc.wait(timeout=60)
        stop_s = time.monotonic() - signalled
        survivors = living(list(seen.values())) + mentioning_ports(kafka, s3, mlflow)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all(list(seen.values()) + mentioning_ports(kafka, s3, mlflow))

    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert rc == 1, stderr[-2000:]
    assert "flts up: interrupted while waiting for the MLflow server; stopped what had started" in stderr
    assert survivors == []
    assert stop_s < 20, "a stop during start-up must not wait for the start-up timeout"


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_flts_up_after_flts_down_starts_empty_and_moves_the_old_mlflow_database_aside(
    stack_state_dir: Path,
) -> None:
    kafka, s3, mlflow = free_ports(3)
    up = [flts(), "up", "--detach", *port_args(kafka, s3, mlflow, stack_state_dir)]
    first = subprocess.run(up, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "previous stack" not in first.stdout
    client = MlflowClient(tracking_uri=f"http://{HOST}:{mlflow}")
    experiment = client.get_experiment_by_name("Default")
    assert experiment is not None
    old_run = client.create_run(experiment.experiment_id, run_name="before-restart").info.run_id
    note = stack_state_dir.parent / "note.txt"
    note.write_text("kept only in the S3 server's memory")
    client.log_artifact(old_run, str(note))
    client.set_terminated(old_run)
    down = [flts(), "down", "--state-dir", str(stack_state_dir)]
    assert subprocess.run(down, capture_output=True, text=True, timeout=60).returncode == 0

    second = subprocess.run(up, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert second.returncode == 0, second.stderr[-2000:]
    moved = stack_state_dir / "previous-stack" / "mlflow.db"
    assert f"flts up: moved the previous stack's MLflow database to {moved}" in second.stdout
    assert moved.exists() and (stack_state_dir / "mlflow.db").exists()
    # Nothing of the old stack is left to disagree with: no run in MLflow, no object in S3.
    with pytest.raises(MlflowException) as gone:
        client.get_run(old_run)
    assert gone.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    env = json.loads((stack_state_dir / "stack.json").read_text())["env"]
    store = ObjectStore(f"http://{HOST}:{s3}", env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    assert store.list_keys(MLFLOW_BUCKET) == []
    # ...and the new stack works: the same check as after a first start.
    assert_stack_serves(kafka, s3, mlflow, stack_state_dir)
    assert subprocess.run(down, capture_output=True, text=True, timeout=60).returncode == 0
