"""Probes answer before the dependency waits: a Kubernetes startupProbe sees a live process while
the evaluator (or a trainer) waits for a broker that is not there yet, and readiness follows once
it is. The broker "arrives" when a TCP forwarder to the real session broker starts listening on
the address the service was given."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from flts_cli.stack import StackConfig, free_port
from shared.storage import ObjectStore
from tests.helpers.processes import ServiceProcess
from tests.helpers.waiting import wait_until
from tests.integration.test_evaluator import evaluator_env, make_topics


class LateBroker:
    """A TCP forwarder to the real broker on `port`, listening only once `open()` is called.

    Until then connections to `port` are refused, as to a broker that has not started. Kafka
    clients bootstrap through it and then reach the broker at its advertised address."""

    def __init__(self, port: int, target: str) -> None:
        host, _, target_port = target.rpartition(":")
        self.port = port
        self.target = (host, int(target_port))
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def open(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, name="late-broker", daemon=True).start()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in [*self._sockets, *([self._listener] if self._listener else [])]:
            with contextlib.suppress(OSError):
                sock.close()


def probe(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def assert_live_not_ready_while_waiting_for_kafka(service: ServiceProcess, port: int) -> None:
    service.wait_until(lambda: probe(port, "/healthz")[0] == 200, 60, "/healthz before the broker")
    status, live = probe(port, "/healthz")
    assert status == 200 and live["consuming"] is False
    starting = live["starting"]
    assert isinstance(starting, dict) and starting["waiting_for"] == "kafka", live
    status, ready = probe(port, "/readyz")
    assert status == 503 and ready["waiting_for"] == "kafka", ready


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_evaluator_is_live_while_the_broker_is_unreachable_and_ready_once_it_answers(
    stack: StackConfig, service_env: dict[str, str], object_store: ObjectStore, tmp_path: Path
) -> None:
    topics = make_topics(stack, object_store)
    broker = LateBroker(free_port(), stack.kafka_bootstrap)
    env = evaluator_env(service_env, topics, STARTUP_TIMEOUT_S="120")
    env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{broker.port}"
    port = int(env["HEALTH_PORT"])
    evaluator = ServiceProcess("eval_container", env, tmp_path / "evaluator.log").start()
    try:
        assert_live_not_ready_while_waiting_for_kafka(evaluator, port)
        broker.open()
        evaluator.wait_until(lambda: probe(port, "/readyz")[0] == 200, 60, "/readyz once the broker answers")
        assert probe(port, "/healthz") == (200, {"status": "ok", "service": "evaluator", "consuming": True})
    finally:
        code = evaluator.stop()
        broker.close()
    assert code == 0, evaluator.tail()


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_evaluator_that_never_reaches_the_broker_answers_probes_then_exits_non_zero(
    stack: StackConfig, service_env: dict[str, str], object_store: ObjectStore, tmp_path: Path
) -> None:
    topics = make_topics(stack, object_store)
    env = evaluator_env(service_env, topics, STARTUP_TIMEOUT_S="8")
    env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"
    port = int(env["HEALTH_PORT"])
    evaluator = ServiceProcess("eval_container", env, tmp_path / "evaluator.log").start()
    try:
        assert_live_not_ready_while_waiting_for_kafka(evaluator, port)
        wait_until(lambda: not evaluator.alive(), 60, "the evaluator to give up on the broker")
    finally:
        evaluator.stop()
    assert evaluator.returncode == 1, evaluator.tail()
    assert "dependencies not reachable at start-up" in evaluator.log_text()


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_trainer_is_live_while_the_broker_is_unreachable_and_ready_once_it_answers(
    stack: StackConfig, service_env: dict[str, str], tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:10]
    broker = LateBroker(free_port(), stack.kafka_bootstrap)
    port = free_port()
    env = {
        **service_env,
        "MODEL_TYPE": "GRU",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker.port}",
        "TOPIC_TRAINING_DATA": f"training-data-{suffix}",
        "TOPIC_MODEL_TRAINING": f"model-training-{suffix}",
        "KAFKA_GROUP_ID": f"trainer-gru-{suffix}",
        "STARTUP_TIMEOUT_S": "120",
        "USE_CUDA": "false",
        "LOG_LEVEL": "INFO",
        "HEALTH_PORT": str(port),
    }
    trainer = ServiceProcess(
        [sys.executable, "-m", "train_container"], env, tmp_path / "trainer.log", name="trainer"
    )
    trainer.start()
    try:
        assert_live_not_ready_while_waiting_for_kafka(trainer, port)
        broker.open()
        trainer.wait_until(lambda: probe(port, "/readyz")[0] == 200, 90, "/readyz once the broker answers")
        assert probe(port, "/readyz") == (
            200,
            {"status": "ready", "service": "train-gru", "consuming": True, "mlflow": True},
        )
    finally:
        code = trainer.stop()
        broker.close()
    assert code == 0, trainer.tail()
