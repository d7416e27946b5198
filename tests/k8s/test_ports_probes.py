"""Container ports and probe paths are the ones the code serves."""

from __future__ import annotations

import importlib
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from starlette.routing import Match

from tests.k8s.manifests import Resource, Workload, find, settings_from

# Connection values for building settings in-process; nothing is contacted.
OFFLINE = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
    "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "offline-test",
    "AWS_SECRET_ACCESS_KEY": "offline-test",
}


def _only_container(rendered: list[Resource], name: str) -> dict[str, Any]:
    [container] = Workload(find(rendered, "Deployment", name)).containers
    return container


def _literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _http_probes(container: dict[str, Any]) -> list[dict[str, Any]]:
    probes = [container.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")]
    return [p["httpGet"] for p in probes if p and "httpGet" in p]


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def test_inference_port_and_probe_paths_are_served_by_the_fastapi_app(rendered: list[Resource]) -> None:
    from inference_container.app import create_app
    from inference_container.settings import InferenceSettings

    container = _only_container(rendered, "inference")
    env = _literal_env(container)
    settings = settings_from(InferenceSettings, {**OFFLINE, **env})
    [port] = container["ports"]
    assert port["containerPort"] == settings.INFERENCE_PORT == 8000
    assert settings.INFERENCE_HOST == "0.0.0.0", "a pod must listen on all interfaces"
    app = create_app(settings, run_background=False)

    def serves_get(path: str) -> bool:
        # Asked of the routes themselves, so paths of included routers count too.
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
        return any(route.matches(scope)[0] is Match.FULL for route in app.routes)

    assert all(serves_get(path) for path in ("/healthz", "/readyz", "/metrics", "/model"))
    assert not serves_get("/no-such-path")
    probes = _http_probes(container)
    assert {p["path"] for p in probes} == {"/readyz", "/healthz"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in probes:
        assert serves_get(probe["path"])
        assert _port_number(container, probe["port"]) == settings.INFERENCE_PORT
    service = find(rendered, "Service", "inference")
    [service_port] = service["spec"]["ports"]
    assert _port_number(container, service_port["targetPort"]) == settings.INFERENCE_PORT


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_evaluator_probes_hit_its_health_server_on_health_port(rendered: list[Resource]) -> None:
    from eval_container.health import HealthState, start_health_server
    from eval_container.settings import EvaluatorSettings

    container = _only_container(rendered, "evaluator")
    settings = settings_from(EvaluatorSettings, {**OFFLINE, **_literal_env(container)})
    [port] = container["ports"]
    assert port["containerPort"] == settings.HEALTH_PORT
    probes = _http_probes(container)
    assert {p["path"] for p in probes} == {"/healthz", "/readyz"}
    # Serve the evaluator's real health handler on a free port and ask it the probes' paths.
    state = HealthState(lambda: True)
    server = start_health_server(0, state, host="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for probe in probes:
            assert _port_number(container, probe["port"]) == settings.HEALTH_PORT
        live = container["livenessProbe"]["httpGet"]["path"]
        ready = container["readinessProbe"]["httpGet"]["path"]
        assert _get(base + live)[0] == 200
        assert _get(base + ready)[0] == 503, "not consuming yet: must not be ready"
        state.consuming.set()
        assert _get(base + ready)[0] == 200
        assert _get(base + "/no-such-probe")[0] == 404, "the server does not answer 200 to anything"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("name", "settings_path"),
    [
        ("train-gru", "train_container.settings.TrainSettings"),
        ("train-lstm", "train_container.settings.TrainSettings"),
        ("train-prophet", "nonml_container.settings.ProphetSettings"),
    ],
)
def test_trainer_probes_hit_the_trainers_health_server_on_health_port(
    rendered: list[Resource], name: str, settings_path: str
) -> None:
    from shared.health import HealthState, start_health_server, stop_health_server

    module, _, class_name = settings_path.rpartition(".")
    settings_class = getattr(importlib.import_module(module), class_name)
    container = _only_container(rendered, name)
    settings = settings_from(settings_class, {**OFFLINE, **_literal_env(container)})
    [port] = container["ports"]
    assert port["containerPort"] == settings.HEALTH_PORT == 8080
    probes = _http_probes(container)
    assert len(probes) == 3, "startup, readiness and liveness all ask the health server"
    assert all(_port_number(container, p["port"]) == settings.HEALTH_PORT for p in probes)
    # The trainers' own probe state (shared.trainer_service builds it this way), on a free port.
    state = HealthState(name, ready_checks={"mlflow": lambda: True})
    server = start_health_server(0, state, host="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        live = base + container["livenessProbe"]["httpGet"]["path"]
        ready = base + container["readinessProbe"]["httpGet"]["path"]
        assert _get(base + container["startupProbe"]["httpGet"]["path"])[0] == 200
        state.waiting_for("kafka")
        assert _get(live)[0] == 200, "live while the bounded start-up waits run"
        assert _get(ready)[0] == 503, "not consuming yet: must not be ready"
        state.start_consuming()
        assert _get(ready)[0] == 200
    finally:
        stop_health_server(server)


@pytest.mark.parametrize(
    ("name", "port", "path"),
    [
        ("minio", 9000, "/minio/health/ready"),
        ("mlflow", 5000, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"),
    ],
)
def test_infrastructure_probes_use_real_api_routes(
    rendered: list[Resource], name: str, port: int, path: str
) -> None:
    kind = "StatefulSet" if name == "minio" else "Deployment"
    [container] = [c for c in Workload(find(rendered, kind, name)).containers if c["name"] == name]
    readiness = container["readinessProbe"]["httpGet"]
    assert (_port_number(container, readiness["port"]), readiness["path"]) == (port, path)


def test_services_reach_infrastructure_on_the_ports_it_listens_on(rendered: list[Resource]) -> None:
    endpoints = find(rendered, "ConfigMap", "flts-endpoints")["data"]
    for variable, service_name in (
        ("KAFKA_BOOTSTRAP_SERVERS", "kafka"),
        ("MLFLOW_TRACKING_URI", "mlflow"),
        ("MLFLOW_S3_ENDPOINT_URL", "minio"),
    ):
        host, _, port = endpoints[variable].removeprefix("http://").partition(":")
        assert host == service_name, variable
        service = find(rendered, "Service", service_name)
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}, variable
