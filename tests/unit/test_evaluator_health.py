"""The probes the evaluator and the trainers serve from before their dependency waits
(shared.health, eval_container.health): live while a bounded start-up runs, not ready until the
consumer loop runs, and not live once a start-up has outlasted every wait it could be in."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from eval_container.health import HealthState as EvaluatorHealth
from shared.health import HealthState, start_health_server, startup_budget_s, stop_health_server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(base: str, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def served() -> Iterator[tuple[HealthState, Clock, list[bool], str]]:
    """A trainer-like state (one readiness check) behind a real server on a free port."""
    clock = Clock()
    mlflow_up = [True]
    state = HealthState(
        "train-gru",
        ready_checks={"mlflow": lambda: mlflow_up[0]},
        startup_budget_s=startup_budget_s(10.0, waits=2),
        cache_s=0.0,
        clock=clock,
    )
    server = start_health_server(0, state, host="127.0.0.1")
    try:
        yield state, clock, mlflow_up, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop_health_server(server)


def test_budget_is_every_wait_plus_a_grace() -> None:
    assert startup_budget_s(60.0, waits=2) == 180.0
    assert startup_budget_s(5.0, waits=1) == 65.0


def test_while_waiting_for_a_dependency_it_is_live_but_not_ready(
    served: tuple[HealthState, Clock, list[bool], str],
) -> None:
    state, clock, _mlflow, base = served
    state.waiting_for("kafka")
    clock.now += 30
    status, body = get(base, "/healthz")
    assert status == 200
    assert body["starting"] == {"waiting_for": "kafka", "seconds": 30.0}
    status, body = get(base, "/readyz")
    assert status == 503
    assert body["waiting_for"] == "kafka" and body["consuming"] is False and body["mlflow"] is False


def test_a_start_up_that_outlasts_every_wait_is_no_longer_live(
    served: tuple[HealthState, Clock, list[bool], str],
) -> None:
    state, clock, _mlflow, base = served
    state.waiting_for("mlflow")
    clock.now += 80.0  # the budget: 2 waits of 10 s + 60 s
    assert get(base, "/healthz")[0] == 200
    clock.now += 0.5
    status, body = get(base, "/healthz")
    assert status == 503 and body["status"] == "stuck"


def test_once_consuming_it_is_ready_while_its_checks_pass_and_stays_live(
    served: tuple[HealthState, Clock, list[bool], str],
) -> None:
    state, clock, mlflow_up, base = served
    state.waiting_for("kafka")
    state.start_consuming()
    clock.now += 10_000  # long after the start-up budget: a running service is not "stuck"
    assert get(base, "/healthz") == (200, {"status": "ok", "service": "train-gru", "consuming": True})
    assert get(base, "/readyz") == (
        200,
        {"status": "ready", "service": "train-gru", "consuming": True, "mlflow": True},
    )
    mlflow_up[0] = False
    assert get(base, "/readyz")[0] == 503
    state.stop_consuming()
    mlflow_up[0] = True
    assert get(base, "/readyz")[0] == 503
    assert get(base, "/healthz")[0] == 200
    assert get(base, "/elsewhere")[0] == 404


def test_readiness_checks_are_cached_between_probes() -> None:
    calls: list[int] = []

    def probe() -> bool:
        calls.append(1)
        return True

    state = EvaluatorHealth(probe, cache_s=5.0)
    state.start_consuming()
    for _ in range(3):
        assert state.readiness()[0]
    assert len(calls) == 1
    # The evaluator's state has its own name and the MLflow check.
    assert state.readiness()[1]["service"] == "evaluator"
    assert state.readiness()[1]["mlflow"] is True
