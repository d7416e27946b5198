"""NetworkPolicies admit exactly the pods that need a server, and the exec probes that stand in
for an HTTP endpoint really detect the connection they claim to."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.k8s.manifests import Resource, Workload, config_maps, find, workloads

# server (app.kubernetes.io/name) → (port, client label, how a pod shows it is a client)
SERVERS = {
    "kafka": (9092, "flts.io/kafka-client", {"KAFKA_BOOTSTRAP_SERVERS"}),
    "minio": (9000, "flts.io/s3-client", {"MLFLOW_S3_ENDPOINT_URL"}),
    "mlflow": (5000, "flts.io/mlflow-client", {"MLFLOW_TRACKING_URI"}),
    "postgres": (5432, "flts.io/postgres-client", {"PG_PASSWORD"}),
}


def _policies(rendered: list[Resource]) -> list[Resource]:
    return [r for r in rendered if r["kind"] == "NetworkPolicy"]


def _env_of(workload: Workload, maps: dict[str, dict[str, str]]) -> set[str]:
    names: set[str] = set()
    for container in workload.all_containers:
        names |= {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            names |= set(maps[source["configMapRef"]["name"]])
    return names


def _admits(policy: Resource, pod_labels: dict[str, str], port: int) -> bool:
    for rule in policy["spec"].get("ingress", []):
        ports = {p["port"] for p in rule.get("ports", [])}
        if ports and port not in ports:
            continue
        sources = rule.get("from")
        if not sources:
            return True
        for source in sources:
            wanted = source.get("podSelector", {}).get("matchLabels", {})
            if "podSelector" in source and all(pod_labels.get(k) == v for k, v in wanted.items()):
                return True
    return False


def _selects(policy: Resource, pod_labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(pod_labels.get(k) == v for k, v in wanted.items())


def test_ingress_is_denied_unless_a_policy_allows_it(rendered: list[Resource]) -> None:
    deny = find(rendered, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"]["podSelector"] == {}
    assert deny["spec"]["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny["spec"]


def test_each_server_admits_exactly_the_pods_configured_to_reach_it(rendered: list[Resource]) -> None:
    maps = config_maps(rendered)
    policies = _policies(rendered)
    pods = workloads(rendered)
    for server, (port, client_label, markers) in SERVERS.items():
        server_pods = [
            w for w in pods if w.template["metadata"]["labels"]["app.kubernetes.io/name"] == server
        ]
        assert server_pods, server
        guarding = [
            p
            for p in policies
            if p["spec"]["podSelector"] and _selects(p, server_pods[0].template["metadata"]["labels"])
        ]
        assert guarding, f"no NetworkPolicy selects {server}"
        for workload in pods:
            if workload in server_pods:
                continue
            labels = workload.template["metadata"]["labels"]
            needs = bool(_env_of(workload, maps) & markers)
            admitted = any(_admits(p, labels, port) for p in guarding)
            assert admitted == needs, (
                f"{workload} {'needs' if needs else 'must not reach'} {server}:{port}; "
                f"label {client_label}={labels.get(client_label)!r}"
            )


def test_inference_is_reachable_from_locust_workers_only(rendered: list[Resource]) -> None:
    policies = _policies(rendered)
    inference = Workload(find(rendered, "Deployment", "inference")).template["metadata"]["labels"]
    guarding = [p for p in policies if p["spec"]["podSelector"] and _selects(p, inference)]
    for workload in workloads(rendered):
        labels = workload.template["metadata"]["labels"]
        expected = workload.name == "locust-worker"
        assert any(_admits(p, labels, 8000) for p in guarding) == expected, str(workload)


def test_locust_web_ui_is_open_and_master_port_only_to_workers(rendered: list[Resource]) -> None:
    policy = find(rendered, "NetworkPolicy", "allow-locust-master")
    worker = Workload(find(rendered, "Deployment", "locust-worker")).template["metadata"]["labels"]
    trainer = Workload(find(rendered, "Deployment", "train-gru")).template["metadata"]["labels"]
    assert _admits(policy, worker, 5557)
    assert not _admits(policy, trainer, 5557)
    assert _admits(policy, trainer, 8089), "the web UI behind the NodePort admits any source"


def _exec_probe(rendered: list[Resource], kind: str, name: str) -> list[str]:
    [container] = Workload(find(rendered, kind, name)).containers
    readiness = container["readinessProbe"]["exec"]["command"]
    assert container["livenessProbe"]["exec"]["command"] == readiness
    return list(readiness)


@pytest.mark.parametrize(
    ("kind", "name", "port"),
    [("Deployment", "locust-worker", 5557)],
)
def test_connection_probe_passes_only_while_the_pod_holds_the_connection(
    rendered: list[Resource], kind: str, name: str, port: int
) -> None:
    command = _exec_probe(rendered, kind, name)
    needle = f":{port:04X}'"
    assert needle in command[-1], f"{name}'s probe does not look for port {port}"
    # Run the manifest's own command against a connection this test opens on a free port.
    with socket.create_server(("127.0.0.1", 0)) as server:
        free = server.getsockname()[1]
        probe = [sys.executable, *command[1:-1], command[-1].replace(needle, f":{free:04X}'")]
        assert subprocess.run(probe, timeout=10, check=False).returncode == 1
        with socket.create_connection(("127.0.0.1", free)) as client:
            accepted, _ = server.accept()
            with accepted:
                assert subprocess.run(probe, timeout=10, check=False).returncode == 0
            client.close()
