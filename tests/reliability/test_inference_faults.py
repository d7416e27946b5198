"""Inference keeps serving through MLflow and S3 outages (real processes, private servers).

- MLflow stopped while serving: predictions keep flowing from the loaded model; a promotion that
  arrives while MLflow is down is applied once MLflow is back.
- S3 down at start: the replica is alive and not ready, and becomes ready once an S3 server
  appears on its port with the live pointer in it.

These tests stop servers, so they use their own (not the session's) MLflow or S3 process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from flts_cli.stack import LocalStack, StackConfig, free_port, free_ports, venv_bin
from shared.kafka import EventProducer, ensure_topics
from shared.storage import ObjectStore
from tests.helpers.processes import ServiceProcess
from tests.helpers.waiting import wait_until
from tests.integration.test_inference_support import (
    load_test_split,
    log_model_run,
    make_pointer,
    window_body,
    write_pointer,
)
from tests.reliability.support import http_status, unique


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[LocalStack]:
    kafka, s3, mlflow = free_ports(3)
    config = StackConfig(kafka_port=kafka, s3_port=s3, mlflow_port=mlflow, state_dir=tmp_path / "st")
    local = LocalStack(config)
    local.start()
    try:
        yield local
    finally:
        local.stop()


def stop_mlflow(local: LocalStack) -> None:
    for managed, proc in list(local.processes):
        if managed.name == "mlflow":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(managed.pid, signal.SIGKILL)
            if proc is not None:
                proc.wait(10)
            local.processes.remove((managed, proc))


def stream(url: str, body: bytes, stop: threading.Event, seen: list[tuple[int, str | None]]) -> None:
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while not stop.is_set():
            try:
                response = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
                seen.append((response.status_code, response.json().get("run_id")))
            except httpx.HTTPError as exc:
                seen.append((0, type(exc).__name__))
            time.sleep(0.01)


@pytest.mark.slow
def test_mlflow_outage_keeps_predictions_flowing_and_a_promotion_during_it_is_applied_after(
    private_stack: LocalStack, tmp_path: Path
) -> None:
    cfg = private_stack.config
    identifier = unique("mlflow-outage")
    first, second = (log_model_run(cfg, tmp_path, identifier=identifier, seed=s) for s in (21, 22))
    store = ObjectStore(cfg.s3_url, cfg.access_key, cfg.secret_key)
    write_pointer(store, make_pointer(first, identifier, age_s=60))
    topic = unique("model-selected")
    ensure_topics(cfg.kafka_bootstrap, [topic])
    port = free_port()
    env = {
        **os.environ,
        **cfg.service_env(),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "IDENTIFIERS": identifier,
        "TOPIC_MODEL_SELECTED": topic,
        "INFERENCE_HOST": "127.0.0.1",
        "INFERENCE_PORT": str(port),
        "POINTER_POLL_S": "600",  # after start-up only Kafka brings promotions
        "MODEL_RELOAD_BACKOFF_S": "0.5",
        "MODEL_RELOAD_MAX_BACKOFF_S": "2",
        "LOG_LEVEL": "INFO",
    }
    server = ServiceProcess("inference_container", env, tmp_path / "inference.log").start()
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    seen: list[tuple[int, str | None]] = []
    streamer = threading.Thread(
        target=stream, args=(url, orjson.dumps(window_body(load_test_split(), 50)), stop, seen), daemon=True
    )
    producer = EventProducer(cfg.kafka_bootstrap, client_id="reliability-mlflow-outage")

    def model() -> dict[str, object]:
        assert server.alive(), server.tail()
        described: dict[str, object] = httpx.get(url + "/model", timeout=2).json()
        return described

    try:
        wait_until(lambda: http_status(url + "/readyz") == 200, 90, "the first model")
        wait_until(lambda: httpx.get(url + "/healthz").json()["consumer_assigned"], 60, "the consumer")
        time.sleep(2)  # the consumer starts at `latest`; let its first fetch pin that offset
        streamer.start()
        stop_mlflow(private_stack)
        assert http_status(cfg.mlflow_url + "/health") == 0
        time.sleep(2)
        producer.publish(topic, identifier, make_pointer(second, identifier))
        wait_until(lambda: model()["pending"] == {identifier: second.run_id}, 30, "the promotion wanted")
        wait_until(lambda: model().get("last_error"), 30, "a failed load while MLflow is down")
        time.sleep(3)
        assert model()["run_id"] == first.run_id  # still serving the loaded model
        served_during_outage = len(seen)
        private_stack._start_mlflow()
        wait_until(lambda: model()["run_id"] == second.run_id, 60, "the promotion after MLflow is back")
        time.sleep(1)
    finally:
        stop.set()
        if streamer.is_alive():
            streamer.join(15)
        producer.close()
        code = server.stop()
    codes = {status for status, _run in seen}
    runs = [run for _status, run in seen]
    print(f"{len(seen)} requests, {served_during_outage} before MLflow came back; statuses {codes}")
    assert codes == {200}, [s for s in seen if s[0] != 200][:5]
    assert served_during_outage > 20
    assert runs[0] == first.run_id and runs[-1] == second.run_id
    # The swap is one reference: once the new model answers, the old one never does again.
    switch = runs.index(second.run_id)
    assert set(runs[switch:]) == {second.run_id}
    assert code in (0, -15), server.tail()


@pytest.mark.slow
def test_s3_down_at_start_is_not_ready_then_ready_once_s3_appears(
    stack: StackConfig, service_env: dict[str, str], tmp_path: Path
) -> None:
    identifier = unique("s3-late")
    logged = log_model_run(stack, tmp_path, identifier=identifier, seed=31)
    s3_port, port = free_ports(2)
    env = {
        **service_env,
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",  # nothing listens there yet
        "IDENTIFIERS": identifier,
        "TOPIC_MODEL_SELECTED": unique("model-selected"),
        "INFERENCE_HOST": "127.0.0.1",
        "INFERENCE_PORT": str(port),
        "POINTER_POLL_S": "1",
        "MODEL_RELOAD_BACKOFF_S": "0.5",
        "MODEL_RELOAD_MAX_BACKOFF_S": "2",
        "LOG_LEVEL": "INFO",
    }
    server = ServiceProcess("inference_container", env, tmp_path / "inference.log").start()
    url = f"http://127.0.0.1:{port}"
    moto: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: http_status(url + "/healthz") == 200, 60, "the process to answer")
        time.sleep(3)
        assert server.alive()
        assert http_status(url + "/readyz") == 503
        with (tmp_path / "moto.log").open("wb") as moto_log:
            moto = subprocess.Popen(
                [venv_bin("moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                stdout=moto_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        store = ObjectStore(f"http://127.0.0.1:{s3_port}", stack.access_key, stack.secret_key)
        wait_until(lambda: http_status(f"http://127.0.0.1:{s3_port}/moto-api/") == 200, 30, "moto")
        store.ensure_bucket("model-promotion")
        write_pointer(store, make_pointer(logged, identifier))
        started = time.monotonic()
        wait_until(lambda: http_status(url + "/readyz") == 200, 60, "readiness once S3 is there")
        print(f"ready {time.monotonic() - started:.1f}s after the pointer appeared")
        assert httpx.get(url + "/model").json()["run_id"] == logged.run_id
    finally:
        code = server.stop()
        if moto is not None:
            os.killpg(moto.pid, signal.SIGTERM)
            moto.wait(10)
    assert code in (0, -15), server.tail()
