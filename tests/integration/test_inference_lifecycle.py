"""Two real replicas (`python -m inference_container` processes) follow promotions on Kafka:
/readyz flips 503 → 200 when a promotion arrives, both swap on one promotion, and a swap in the
middle of a stream of requests loses none."""

from __future__ import annotations

import csv
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from flts_cli.stack import StackConfig, free_port
from inference_container.lifecycle import ModelManager, ServingModel
from inference_container.settings import InferenceSettings
from shared.events import PromotionPointer
from shared.kafka import EventProducer, ensure_topics
from tests.helpers.processes import ServiceProcess
from tests.helpers.waiting import wait_until
from tests.integration.test_inference_support import (
    LoggedModel,
    load_test_split,
    log_model_run,
    make_pointer,
    window_body,
)


class Replica(ServiceProcess):
    """`python -m inference_container` on a free port of its own, started at once."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            "inference_container",
            {**env, "INFERENCE_HOST": "127.0.0.1", "INFERENCE_PORT": str(self.port)},
            log_path,
            name="replica",
        )
        self.start()

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(self.url + path, timeout=2.0)
        except httpx.TransportError:
            if not self.alive():
                raise AssertionError(f"replica exited: {self.tail()}") from None
            return None

    def status_code(self, path: str) -> int:
        """The status of a GET, 0 while nothing answers."""
        response = self.get(path)
        return response.status_code if response is not None else 0

    def status(self, path: str = "/healthz") -> dict[str, Any]:
        response = self.get(path)
        return response.json() if response is not None else {}


@pytest.fixture(scope="module")
def identifier() -> str:
    return f"life-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def models(
    stack: StackConfig, tmp_path_factory: pytest.TempPathFactory, identifier: str
) -> list[LoggedModel]:
    root = tmp_path_factory.mktemp("models")
    return [log_model_run(stack, root, identifier=identifier, seed=seed) for seed in (11, 12)]


@pytest.fixture(scope="module")
def replicas(
    service_env: dict[str, str], identifier: str, stack: StackConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Replica], str]]:
    topic = f"model-selected-{identifier}"
    ensure_topics(stack.kafka_bootstrap, [topic])
    env = {
        **service_env,
        "IDENTIFIERS": identifier,
        "TOPIC_MODEL_SELECTED": topic,
        # Only Kafka may bring the model in this test: the pointer is never written to S3.
        "POINTER_POLL_S": "600",
        "MODEL_RELOAD_BACKOFF_S": "0.5",
    }
    logs = tmp_path_factory.mktemp("replicas")
    started = [Replica(env, logs / f"replica-{i}.log") for i in range(2)]
    try:
        wait_until(
            lambda: all(r.status().get("consumer_assigned") for r in started),
            90,
            "both replicas to join the promotion topic",
            interval_s=0.3,
        )
        yield started, topic
    finally:
        for replica in started:
            replica.stop()


def _stream(replica: Replica, body: bytes, stop: threading.Event, seen: list[tuple[int, str | None]]) -> None:
    with httpx.Client(base_url=replica.url, timeout=10.0) as client:
        while not stop.is_set():
            response = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
            run_id = response.json().get("run_id") if response.status_code == 200 else None
            seen.append((response.status_code, run_id))


def test_both_replicas_become_ready_then_swap_on_one_promotion_without_losing_a_request(
    replicas: tuple[list[Replica], str], models: list[LoggedModel], identifier: str, stack: StackConfig
) -> None:
    started, topic = replicas
    first, second = models
    for replica in started:
        assert replica.status_code("/readyz") == 503
    producer = EventProducer(stack.kafka_bootstrap, "test-inference-lifecycle")

    producer.publish(topic, identifier, make_pointer(first, identifier))
    wait_until(
        lambda: all(r.status("/readyz").get("run_id") == first.run_id for r in started),
        60,
        "both replicas to serve the first promotion",
        interval_s=0.2,
    )
    for replica in started:
        assert replica.status_code("/readyz") == 200

    body = orjson.dumps(window_body(load_test_split(), 200, inference_length=3))
    stop = threading.Event()
    seen: list[list[tuple[int, str | None]]] = [[], []]
    threads = [
        threading.Thread(target=_stream, args=(replica, body, stop, seen[i]), daemon=True)
        for i, replica in enumerate(started)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(len(s) >= 20 for s in seen), 30, "requests to flow before the swap")
        producer.publish(topic, identifier, make_pointer(second, identifier))
        wait_until(
            lambda: all(r.status("/model").get("run_id") == second.run_id for r in started),
            60,
            "both replicas to swap to the second promotion",
            interval_s=0.2,
        )
        counts = [len(s) for s in seen]
        wait_until(
            lambda: all(len(s) >= c + 20 for s, c in zip(seen, counts, strict=True)), 30, "requests after"
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    for answers in seen:
        statuses = {status for status, _ in answers}
        assert statuses == {200}, f"non-200 answers during the swap: {statuses}"
        runs = [run for _, run in answers]
        assert runs[0] == first.run_id and runs[-1] == second.run_id
        # Once the new model answers, the old one never does again: one atomic swap.
        switch = runs.index(second.run_id)
        assert set(runs[switch:]) == {second.run_id}
    producer.close()


def test_a_failed_load_keeps_the_old_model_and_is_retried_until_it_succeeds(
    stack: StackConfig, models: list[LoggedModel], identifier: str
) -> None:
    values: dict[str, Any] = {
        **stack.service_env(),
        "IDENTIFIERS": identifier,
        "MODEL_RELOAD_BACKOFF_S": 0.05,
    }
    settings = InferenceSettings(**values)
    manager = ModelManager(settings)
    failures_left = [2]
    real_loader = manager._load_from_mlflow

    def flaky(pointer: PromotionPointer) -> ServingModel:
        # The second model's first two loads fail as if MLflow were down.
        if pointer.run_id == models[1].run_id and failures_left[0] > 0:
            failures_left[0] -= 1
            raise ConnectionError("MLflow unreachable (simulated)")
        return real_loader(pointer)

    manager._loader = flaky
    loader = threading.Thread(target=manager._load_loop, daemon=True)
    loader.start()
    try:
        manager.offer(make_pointer(models[0], identifier, age_s=10), "test")
        wait_until(lambda: identifier in manager.models, 30, "the first model")
        manager.offer(make_pointer(models[1], identifier), "test")
        wait_until(lambda: manager.last_error is not None, 30, "a failed load")
        assert manager.models[identifier].pointer.run_id == models[0].run_id
        wait_until(
            lambda: manager.models[identifier].pointer.run_id == models[1].run_id,
            30,
            "the retried load to succeed",
        )
        assert failures_left == [0] and manager.last_error is None
    finally:
        manager.stop()


LOCUSTFILE = Path(__file__).resolve().parents[2] / "locust" / "locustfile.py"


@pytest.fixture
def locust_env(service_env: dict[str, str], identifier: str) -> dict[str, str]:
    """Locust names the station in every request: this module's station, with PobleSec's windows
    (its models were fitted on PobleSec)."""
    csv_path = Path(__file__).resolve().parents[2] / "data" / "PobleSec_test.csv"
    return {**service_env, "LOCUST_DATASET": identifier, "LOCUST_DATA_PATH": str(csv_path)}


@pytest.fixture
def served_replica(
    replicas: tuple[list[Replica], str], models: list[LoggedModel], identifier: str, stack: StackConfig
) -> Replica:
    """The first replica, serving a model: run alone, the replicas have none yet, so promote one."""
    started, topic = replicas
    replica = started[0]
    if replica.status_code("/readyz") != 200:
        producer = EventProducer(stack.kafka_bootstrap, "test-inference-locust")
        producer.publish(topic, identifier, make_pointer(models[1], identifier))
        producer.close()
        wait_until(lambda: replica.status_code("/readyz") == 200, 60, "a model to serve")
    return replica


def test_locust_headless_run_of_real_windows_has_no_failures(
    served_replica: Replica, locust_env: dict[str, str], tmp_path: Path
) -> None:
    prefix = tmp_path / "run"
    argv = [str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), "--headless"]
    argv += [
        "-u",
        "5",
        "-r",
        "5",
        "-t",
        # Long enough that a busy machine still gets well past the 20 forecasts asserted below.
        "8s",
        "--csv",
        str(prefix),
        "--host",
        served_replica.url,
        "--only-summary",
    ]
    done = subprocess.run(argv, env=locust_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(f"{prefix}_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert "/predict" in rows, f"the swarm made no /predict request: {sorted(rows)}\n{done.stderr[-2000:]}"
    assert int(rows["/predict"]["Request Count"]) > 20
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert "/healthz" in rows


def test_locust_web_mode_is_driven_by_swarm_stats_and_stop(
    served_replica: Replica, locust_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    argv = [str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), "--host", served_replica.url]
    argv += ["--web-host", "127.0.0.1", "--web-port", str(port)]
    locust = ServiceProcess(argv, locust_env, tmp_path / "locust.log").start()
    web = f"http://127.0.0.1:{port}"
    try:

        def web_up() -> bool:
            try:
                return httpx.get(web + "/", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        locust.wait_until(web_up, 30, "the Locust web UI")
        swarm = httpx.post(web + "/swarm", data={"user_count": "3", "spawn_rate": "3"}, timeout=5)
        assert swarm.status_code == 200 and swarm.json()["success"] is True

        def stats() -> dict[str, Any]:
            current: dict[str, Any] = httpx.get(web + "/stats/requests", timeout=5).json()
            return current

        wait_until(lambda: stats()["total_rps"] > 0 or _total(stats()) > 10, 20, "requests to flow")
        current = stats()
        assert current["fail_ratio"] == 0
        assert _total(current) > 0
        assert httpx.post(web + "/stop", timeout=5).status_code == 200
        wait_until(lambda: stats()["state"] == "stopped", 15, "the swarm to stop")
    finally:
        locust.stop(timeout_s=10)


def _total(stats: dict[str, Any]) -> int:
    return sum(int(s["num_requests"]) for s in stats["stats"] if s["name"] != "Aggregated")
