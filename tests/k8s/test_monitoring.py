"""The monitoring component (components/monitoring, applied through overlays/monitoring) renders
and validates like the base and adds only its own objects; every pod that serves /metrics is
annotated with the port and path its code serves, the shipped Prometheus configuration turns those
annotations into exactly that scrape target, a NetworkPolicy lets Prometheus through the default
deny, and the dashboard ConfigMap is the dashboard file."""

from __future__ import annotations

import copy
import importlib
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from tests.helpers.repo_files import files_git_would_commit
from tests.k8s.manifests import (
    BASE_DIR,
    KUSTOMIZE_DIR,
    Resource,
    Workload,
    find,
    kubectl,
    render_with_kubectl,
    settings_from,
    workloads,
)
from tests.k8s.test_schema import assert_valid

COMPONENT = KUSTOMIZE_DIR / "components" / "monitoring"
OVERLAY = KUSTOMIZE_DIR / "overlays" / "monitoring"
DASHBOARD_FILE = COMPONENT / "flts-dashboard.json"
NAMESPACE = "flts"
ADDED = {
    ("ConfigMap", "flts-grafana-dashboard"),
    ("ConfigMap", "flts-prometheus-scrape"),
    ("NetworkPolicy", "allow-prometheus-scrape"),
    ("NetworkPolicy", "allow-prometheus-scrape-consumers"),
}
SCRAPE, PORT, PATH = "prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"
# Where the component's NetworkPolicy expects the Prometheus server (docs/MONITORING.md).
PROMETHEUS_NAMESPACE = {"kubernetes.io/metadata.name": "monitoring"}
PROMETHEUS_POD = {"app.kubernetes.io/name": "prometheus"}
# The images that run each package's code; a package that imports prometheus_client serves
# /metrics from the workloads running those images.
CONSUMER_IMAGES = frozenset({"flts/eval", "flts/batch", "flts/train", "flts/nonml"})
IMAGES_OF_PACKAGE: dict[str, frozenset[str]] = {
    "inference_container": frozenset({"flts/inference"}),
    "eval_container": frozenset({"flts/eval"}),
    "batch_container": frozenset({"flts/batch"}),
    "train_container": frozenset({"flts/train"}),
    "nonml_container": frozenset({"flts/nonml"}),
    "preprocess_container": frozenset({"flts/preprocess"}),
    "locust": frozenset({"flts/locust"}),
    # shared.health: the health server of every Kafka consumer service, /metrics included.
    "shared": CONSUMER_IMAGES,
    "flts_cli": frozenset(),  # runs on a workstation, never in the cluster
}
# The settings class of each consumer image: where its health port comes from.
SETTINGS_OF_IMAGE = {
    "flts/eval": "eval_container.settings.EvaluatorSettings",
    "flts/batch": "batch_container.settings.BatchSettings",
    "flts/train": "train_container.settings.TrainSettings",
    "flts/nonml": "nonml_container.settings.ProphetSettings",
}
CONSUMERS = {"evaluator", "batch-forecast", "train-gru", "train-lstm", "train-prophet"}
# Connection values for building settings in-process; nothing is contacted.
OFFLINE = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
    "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "offline-test",
    "AWS_SECRET_ACCESS_KEY": "offline-test",
}

pytestmark = pytest.mark.skipif(
    kubectl() is None, reason="the overlay uses a component, which only kubectl renders here"
)


@pytest.fixture(scope="module")
def monitored() -> list[Resource]:
    return render_with_kubectl(OVERLAY)


@pytest.fixture(scope="module")
def base() -> list[Resource]:
    return render_with_kubectl(BASE_DIR)


def _identity(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def _annotations(workload: Workload) -> dict[str, str]:
    return dict(workload.template["metadata"].get("annotations", {}))


def _image_repository(workload: Workload) -> set[str]:
    return {container["image"].partition(":")[0] for container in workload.all_containers}


# -- rendering -----------------------------------------------------------------------------------


def test_monitoring_overlay_renders_and_validates_strictly(monitored: list[Resource]) -> None:
    assert_valid(monitored)
    for resource in monitored:
        if resource["kind"] != "Namespace":
            assert resource["metadata"].get("namespace") == NAMESPACE, _identity(resource)


def test_component_adds_its_objects_and_changes_nothing_but_pod_annotations(
    monitored: list[Resource], base: list[Resource]
) -> None:
    by_id = {_identity(r): r for r in monitored}
    assert set(by_id) - {_identity(r) for r in base} == ADDED
    for identity in ADDED:
        labels = by_id[identity]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "flts", identity
    for original in base:
        changed = copy.deepcopy(by_id[_identity(original)])
        if changed["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob"):
            metadata = Workload(changed).template["metadata"]
            for key in (SCRAPE, PORT, PATH):
                metadata.get("annotations", {}).pop(key, None)
            if (
                metadata.get("annotations") == {}
                and "annotations" not in Workload(original).template["metadata"]
            ):
                del metadata["annotations"]
        assert changed == original, f"the component changed {_identity(original)} beyond scrape annotations"


# -- which pods serve /metrics, and on which port ---------------------------------------------------


def _packages_exporting_metrics() -> set[str]:
    found = set()
    for path in files_git_would_commit():
        top = path.split("/", 1)[0]
        if not path.endswith(".py") or top in ("tests", "bench"):
            continue
        text = (KUSTOMIZE_DIR.parent / path).read_text()
        if re.search(r"^\s*(from|import)\s+prometheus_client\b", text, re.MULTILINE):
            found.add(top)
    return found


def _metrics_images() -> set[str]:
    images: set[str] = set()
    for package in _packages_exporting_metrics():
        assert package in IMAGES_OF_PACKAGE, (
            f"{package} exports Prometheus metrics: name the images that run it in IMAGES_OF_PACKAGE "
            "and annotate their pods in components/monitoring"
        )
        images |= IMAGES_OF_PACKAGE[package]
    return images


def test_the_images_exporting_metrics_are_inference_and_the_kafka_consumers() -> None:
    # When another service starts exporting metrics this fails: annotate it, then update the set.
    assert _metrics_images() == {"flts/inference"} | CONSUMER_IMAGES


def _inference_metrics_port(container: dict[str, Any]) -> int:
    """The port the inference app serves /metrics on, from the container's own environment, after
    asking the app itself for /metrics."""
    from inference_container.app import create_app
    from inference_container.settings import InferenceSettings

    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    settings = settings_from(InferenceSettings, {**OFFLINE, **env})
    with TestClient(create_app(settings, run_background=False)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert "# TYPE inference_requests" in response.text
    return settings.INFERENCE_PORT


def _consumer_metrics_port(container: dict[str, Any]) -> int:
    """The health port a consumer serves /metrics on, from its settings class and the container's
    own environment, after asking a real health server (shared.health) for /metrics."""
    from shared.health import LAG_METRIC, HealthState, start_health_server, stop_health_server

    module, _, name = SETTINGS_OF_IMAGE[container["image"].partition(":")[0]].rpartition(".")
    settings_class = getattr(importlib.import_module(module), name)
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    settings = settings_from(settings_class, {**OFFLINE, **env})
    server = start_health_server(0, HealthState(container["name"]), host="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            assert f"# TYPE {LAG_METRIC} gauge" in response.read().decode()
    finally:
        stop_health_server(server)
    return int(settings.HEALTH_PORT)


def test_every_pod_serving_metrics_is_annotated_with_the_port_it_serves(monitored: list[Resource]) -> None:
    images = _metrics_images()
    annotated = set()
    for workload in workloads(monitored):
        annotations = _annotations(workload)
        serves = bool(_image_repository(workload) & images)
        assert (annotations.get(SCRAPE) == "true") == serves, f"{workload}: serves /metrics is {serves}"
        if not serves:
            assert not {SCRAPE, PORT, PATH} & set(annotations), (
                f"{workload} is annotated but serves no /metrics"
            )
            continue
        annotated.add(workload.name)
        [container] = workload.containers
        image = container["image"].partition(":")[0]
        port = (
            _inference_metrics_port(container)
            if image == "flts/inference"
            else _consumer_metrics_port(container)
        )
        assert annotations[PORT] == str(port)
        assert annotations[PATH] == "/metrics"
        assert port in {p["containerPort"] for p in container["ports"]}, "the metrics port is not declared"
    assert annotated == {"inference"} | CONSUMERS


def test_no_service_is_annotated_for_scraping(monitored: list[Resource]) -> None:
    """Scraping through a Service reaches one replica at random and would count each pod twice
    beside the pod discovery: only pod templates carry the annotations."""
    for resource in monitored:
        if resource["kind"] == "Service":
            assert SCRAPE not in resource["metadata"].get("annotations", {}), _identity(resource)


# -- the Prometheus configuration ------------------------------------------------------------------


def _prometheus_config(monitored: list[Resource]) -> dict[str, Any]:
    data = find(monitored, "ConfigMap", "flts-prometheus-scrape")["data"]
    assert set(data) == {"prometheus.yml"}
    config = yaml.safe_load(data["prometheus.yml"])
    assert isinstance(config, dict)
    return config


def _meta(name: str) -> str:
    """A Kubernetes label or annotation name as Prometheus discovery spells it."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def discovered_targets(workload: Workload, pod_ip: str, phase: str = "Running") -> list[dict[str, str]]:
    """What `kubernetes_sd_configs` role `pod` yields for one pod of `workload`: a target per
    declared container port (one bare target when none is declared), with its meta labels."""
    metadata = workload.template["metadata"]
    common = {
        "__meta_kubernetes_namespace": NAMESPACE,
        "__meta_kubernetes_pod_name": f"{workload.name}-0",
        "__meta_kubernetes_pod_ip": pod_ip,
        "__meta_kubernetes_pod_phase": phase,
        "__scheme__": "http",
        "__metrics_path__": "/metrics",
    }
    for key, value in metadata.get("labels", {}).items():
        common[f"__meta_kubernetes_pod_label_{_meta(key)}"] = value
    for key, value in metadata.get("annotations", {}).items():
        common[f"__meta_kubernetes_pod_annotation_{_meta(key)}"] = value
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    ports = [p["containerPort"] for c in workload.all_containers for p in c.get("ports", [])]
    if not ports:
        return [{**common, "__address__": host}]
    return [{**common, "__address__": f"{host}:{port}"} for port in ports]


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabelling (keep, drop, replace; anchored regex, `;` separator); None = dropped."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        assert action in ("keep", "drop", "replace"), f"relabel action {action} not simulated"
        value = rule.get("separator", ";").join(
            labels.get(name, "") for name in rule.get("source_labels", [])
        )
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if (action == "keep" and match is None) or (action == "drop" and match is not None):
            return None
        if action == "replace" and match is not None:
            template = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            result = match.expand(template)
            if result:
                labels[rule["target_label"]] = result
            else:
                labels.pop(rule["target_label"], None)
    return labels


def scrape_targets(
    config: dict[str, Any], workload: Workload, pod_ip: str, phase: str = "Running"
) -> set[str]:
    """`address path namespace pod app` of each distinct target Prometheus would scrape."""
    found = set()
    for job in config["scrape_configs"]:
        for target in discovered_targets(workload, pod_ip, phase):
            kept = relabel(target, job["relabel_configs"])
            if kept is not None:
                found.add(
                    " ".join(
                        kept.get(k, "")
                        for k in ("__address__", "__metrics_path__", "namespace", "pod", "app")
                    )
                )
    return found


def test_prometheus_configuration_discovers_pods_of_the_flts_namespace(monitored: list[Resource]) -> None:
    config = _prometheus_config(monitored)
    [job] = config["scrape_configs"]
    [discovery] = job["kubernetes_sd_configs"]
    assert discovery["role"] == "pod"
    assert discovery["namespaces"]["names"] == [NAMESPACE]


@pytest.mark.parametrize(("pod_ip", "address"), [("10.1.2.3", "10.1.2.3"), ("fd00::1:2", "[fd00::1:2]")])
def test_each_annotated_pod_is_scraped_once_at_its_metrics_port(
    monitored: list[Resource], pod_ip: str, address: str
) -> None:
    config = _prometheus_config(monitored)
    for workload in workloads(monitored):
        targets = scrape_targets(config, workload, pod_ip)
        annotations = _annotations(workload)
        if annotations.get(SCRAPE) != "true":
            assert targets == set(), f"{workload} is scraped without asking"
            continue
        pod = f"{workload.name}-0"
        expected = f"{address}:{annotations[PORT]} {annotations[PATH]} {NAMESPACE} {pod} {workload.name}"
        assert targets == {expected}, workload


def test_a_pod_that_is_not_running_is_not_scraped(monitored: list[Resource]) -> None:
    config = _prometheus_config(monitored)
    inference = Workload(find(monitored, "Deployment", "inference"))
    assert scrape_targets(config, inference, "10.1.2.3", "Running")
    for phase in ("Pending", "Succeeded", "Failed"):
        assert scrape_targets(config, inference, "10.1.2.3", phase) == set(), phase


def test_relabel_simulation_drops_and_rewrites_like_prometheus() -> None:
    """The simulator above can fail a configuration: a keep rule drops, a replace rewrites."""
    rules = [
        {"source_labels": ["a"], "action": "keep", "regex": "yes"},
        {"source_labels": ["p", "ip"], "regex": r"(\d+);(.+)", "replacement": "$2:$1", "target_label": "x"},
    ]
    assert relabel({"a": "no"}, rules) is None
    assert relabel({"a": "yes", "p": "80", "ip": "1.2.3.4"}, rules) == {
        "a": "yes",
        "p": "80",
        "ip": "1.2.3.4",
        "x": "1.2.3.4:80",
    }


# -- the NetworkPolicy ---------------------------------------------------------------------------


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels", "matchExpressions"}, f"selector {selector} not simulated"
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", f"operator {expression['operator']} not simulated"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admits(policy: Resource, source_namespace: dict[str, str], source_pod: dict[str, str], port: int) -> bool:
    """Whether `policy` lets a pod (its labels) of a namespace (its labels) in on `port`."""
    own_namespace = source_namespace.get("kubernetes.io/metadata.name") == policy["metadata"]["namespace"]
    for rule in policy["spec"].get("ingress", []):
        ports = {p["port"] for p in rule.get("ports", [])}
        if ports and port not in ports:
            continue
        for peer in rule.get("from", []) or [{}]:
            if not peer:
                return True
            in_namespace = (
                _matches(peer["namespaceSelector"], source_namespace)
                if "namespaceSelector" in peer
                else own_namespace
            )
            if in_namespace and _matches(peer.get("podSelector", {}), source_pod):
                return True
    return False


def test_prometheus_alone_may_reach_each_scraped_port(monitored: list[Resource]) -> None:
    policies = [r for r in monitored if r["kind"] == "NetworkPolicy" and r["spec"]["podSelector"]]
    flts_namespace = {"kubernetes.io/metadata.name": NAMESPACE}
    for workload in workloads(monitored):
        annotations = _annotations(workload)
        if annotations.get(SCRAPE) != "true":
            continue
        port = int(annotations[PORT])
        guarding = [
            p for p in policies if _matches(p["spec"]["podSelector"], workload.template["metadata"]["labels"])
        ]
        assert any(admits(p, PROMETHEUS_NAMESPACE, PROMETHEUS_POD, port) for p in guarding), workload
        # Not any pod of the monitoring namespace, nor a pod of ours that calls itself prometheus.
        assert not any(
            admits(p, PROMETHEUS_NAMESPACE, {"app.kubernetes.io/name": "x"}, port) for p in guarding
        )
        assert not any(admits(p, flts_namespace, PROMETHEUS_POD, port) for p in guarding)
    scrape = find(monitored, "NetworkPolicy", "allow-prometheus-scrape")
    assert not admits(scrape, PROMETHEUS_NAMESPACE, PROMETHEUS_POD, 8001), "only the metrics port"
    consumers = find(monitored, "NetworkPolicy", "allow-prometheus-scrape-consumers")
    assert not admits(consumers, PROMETHEUS_NAMESPACE, PROMETHEUS_POD, 8000), "only the health port"
    # The consumers' policy selects exactly the consumers: no other pod opens 8080 to Prometheus.
    selected = {
        w.name
        for w in workloads(monitored)
        if _matches(consumers["spec"]["podSelector"], w.template["metadata"]["labels"])
    }
    assert selected == CONSUMERS


# -- the dashboard -------------------------------------------------------------------------------


def test_dashboard_configmap_holds_the_dashboard_file(monitored: list[Resource]) -> None:
    config_map = find(monitored, "ConfigMap", "flts-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = DASHBOARD_FILE.read_text()
    assert config_map["data"] == {DASHBOARD_FILE.name: text}
    # kubectl apply keeps a copy in an annotation, which may not pass 256 KiB.
    assert len(text.encode()) < 200_000


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_dashboard_panels_are_laid_out_and_each_queries_prometheus() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    assert dashboard["uid"] == "flts-inference"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    for i, panel in enumerate(panels):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for other in panels[:i]:
            assert not _overlap(grid, other["gridPos"]), f"{panel['title']} overlaps {other['title']}"
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_component_folder_holds_only_what_its_kustomization_uses() -> None:
    config = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    used = set(config["resources"])
    used |= {entry.rpartition("=")[2] for g in config["configMapGenerator"] for entry in g["files"]}
    present = {p.name for p in COMPONENT.iterdir()} - {"kustomization.yaml"}
    assert present == used
    assert Path(OVERLAY / "kustomization.yaml").is_file()
