"""Command lines in the manifests are ones the pinned programs accept, and the names they create
(topics, buckets) are the ones the services use."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from shared.events import dlq_topic
from tests.k8s.dockerfiles import final_stage
from tests.k8s.manifests import Resource, Workload, find, setting_defaults
from tests.k8s.test_setup_containers import ready_marker


def _container(
    rendered: list[Resource], kind: str, name: str, container: str | None = None
) -> dict[str, Any]:
    containers = Workload(find(rendered, kind, name)).containers
    if container is None:
        [found] = containers
    else:
        [found] = [c for c in containers if c["name"] == container]
    return found


def _expand(text: str) -> str:
    # The kubelet substitutes $(VAR) from the container's env; any text stands in offline.
    return re.sub(r"\$\((\w+)\)", lambda m: m.group(1).lower(), text)


def _literal(container: dict[str, Any], name: str) -> str:
    [value] = [e["value"] for e in container.get("env", []) if e["name"] == name]
    return str(value)


# Importing mlflow's CLI configures SQLAlchemy mappers, which warn about mlflow's own code.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_mlflow_server_accepts_the_manifest_arguments_and_environment(
    rendered: list[Resource], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backend store (password included) reaches `mlflow server` through its environment,
    which `ps` does not show; the arguments hold no credential."""
    from click.core import ParameterSource
    from mlflow.cli import server

    container = _container(rendered, "Deployment", "mlflow")
    [entrypoint] = final_stage("mlflow").all("ENTRYPOINT")
    assert entrypoint.exec_form() == ["mlflow", "server"]
    assert not any("backend-store-uri" in a or "$(" in a for a in container["args"])
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", _expand(_literal(container, "MLFLOW_BACKEND_STORE_URI")))
    context = server.make_context("server", list(container["args"]))
    params = context.params
    assert context.get_parameter_source("backend_store_uri") == ParameterSource.ENVIRONMENT
    # _expand stands in for the kubelet: $(PG_USER) -> pg_user. (Joined, so that this file holds
    # no URL-with-password shape for tests/unit/test_no_secrets.py to flag.)
    userinfo = ":".join(("pg_user", "pg_password"))
    assert params["backend_store_uri"] == "postgresql://" + userinfo + "@postgres:5432/mlflow"
    assert params["host"] == "0.0.0.0"
    assert params["port"] == container["ports"][0]["containerPort"]
    assert params["serve_artifacts"] is True
    assert params["artifacts_destination"] == "s3://mlflow/"


def test_mlflow_allows_the_host_names_it_is_reached_by(rendered: list[Resource]) -> None:
    """MLflow answers 403 to a Host header it does not allow, while /health still says 200."""
    from mlflow.server.security_utils import is_allowed_host_header

    container = _container(rendered, "Deployment", "mlflow")
    [allowed] = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--allowed-hosts=")]
    hosts = allowed.split(",")
    endpoints = find(rendered, "ConfigMap", "flts-endpoints")["data"]
    assert is_allowed_host_header(hosts, endpoints["MLFLOW_TRACKING_URI"].removeprefix("http://"))
    for key in ("startupProbe", "readinessProbe", "livenessProbe"):
        headers = {h["name"]: h["value"] for h in container[key]["httpGet"].get("httpHeaders", [])}
        assert is_allowed_host_header(hosts, headers["Host"]), f"{key} would be answered 403"
    # `kubectl port-forward svc/mlflow <any local port>:5000`, and the image's HEALTHCHECK.
    for host in ("localhost:5000", "localhost:5001", "localhost:15000", "127.0.0.1:5000", "127.0.0.1:8080"):
        assert is_allowed_host_header(hosts, host), host
    # The wildcard stays on the loopback names.
    for host in ("attacker.example:5000", "localhost.attacker.example:5000", "mlflow.example:5000"):
        assert not is_allowed_host_header(hosts, host), host


PARSE_LOCUST = """
import json, sys
from locust.argument_parser import parse_options
o = parse_options(sys.argv[1:])
print(json.dumps({k: getattr(o, k) for k in ("master", "worker", "web_port", "master_bind_port",
                                             "master_host", "master_port", "host", "locustfile")}))
"""


@pytest.mark.parametrize("name", ["locust-master", "locust-worker"])
def test_locust_accepts_the_manifest_arguments(rendered: list[Resource], name: str) -> None:
    [entrypoint] = final_stage("locust").all("ENTRYPOINT")
    argv = entrypoint.exec_form()[1:] + _container(rendered, "Deployment", name)["args"]
    # Importing locust monkey-patches the whole process (gevent): parse in a child process.
    result = subprocess.run(
        [sys.executable, "-c", PARSE_LOCUST, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    options = json.loads(result.stdout.strip().splitlines()[-1])
    if name == "locust-master":
        assert options["master"] and options["web_port"] == 8089 and options["master_bind_port"] == 5557
        assert options["host"] == "http://inference:8000"
        assert find(rendered, "Service", "inference")["spec"]["ports"][0]["port"] == 8000
    else:
        assert options["worker"] and options["master_host"] == "locust-master"
        assert options["master_port"] == 5557


def test_locust_refuses_a_misspelled_argument() -> None:
    """The check above can fail: locust's parser rejects what it does not know."""
    result = subprocess.run(
        [sys.executable, "-c", PARSE_LOCUST, "-f", "x.py", "--wrker"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0


def _script(rendered: list[Resource], name: str, container: str) -> str:
    return " ".join(_container(rendered, "StatefulSet", name, container)["args"])


def test_the_kafka_pod_creates_the_topics_the_services_use(rendered: list[Resource]) -> None:
    script = _script(rendered, "kafka", "topics")
    [loop] = re.findall(r"for topic in ([^;]+);", script)
    topics = set(loop.split())
    assert topics == setting_defaults("TOPIC_"), "every topic any service uses, and only those"
    # The DLQ names come from the same rule the consumers use.
    assert all(dlq_topic(t) == f"DLQ-{t}" for t in topics) and '"DLQ-$topic"' in script


def test_the_minio_pod_creates_the_buckets_the_services_and_mlflow_use(rendered: list[Resource]) -> None:
    script = _script(rendered, "minio", "buckets")
    [loop] = re.findall(r"for bucket in ([^;]+);", script)
    buckets = set(loop.split())
    expected = setting_defaults("BUCKET_")
    mlflow_args = _container(rendered, "Deployment", "mlflow")["args"]
    [destination] = [a.split("=", 1)[1] for a in mlflow_args if a.startswith("--artifacts-destination=")]
    expected.add(destination.removeprefix("s3://").strip("/"))
    assert buckets == expected


def _server_properties(rendered: list[Resource]) -> dict[str, str]:
    script = _script(rendered, "kafka", "kafka")
    block = script.split("<<PROPS\n", 1)[1].split("\nPROPS", 1)[0]
    pairs = [line.strip().partition("=") for line in block.splitlines() if line.strip()]
    return {key: value for key, _, value in pairs}


def test_topics_have_one_partition_count_and_one_creator(rendered: list[Resource]) -> None:
    """The services' own topic creation (the embedded stack), the Kafka pod's `topics` container and
    the broker's default all say the same number; in the cluster only the container creates:
    the broker creates nothing on first use, and clients bootstrap through a Service that admits
    them only once the pod, topics container included, is ready."""
    from shared.kafka import DEFAULT_PARTITIONS

    topics = _container(rendered, "StatefulSet", "kafka", "topics")
    assert int(_literal(topics, "PARTITIONS")) == DEFAULT_PARTITIONS
    properties = _server_properties(rendered)
    assert int(properties["num.partitions"]) == DEFAULT_PARTITIONS
    assert properties["auto.create.topics.enable"] == "false"
    # The container reaches the broker in its own pod; the Service would not admit it yet.
    assert "--bootstrap-server localhost:9092" in " ".join(topics["args"])
    # Clients bootstrap through the `kafka` Service, which lists ready pods only ...
    endpoints = find(rendered, "ConfigMap", "flts-endpoints")["data"]
    assert endpoints["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert not find(rendered, "Service", "kafka")["spec"].get("publishNotReadyAddresses")
    # ... and the pod is ready only when the container says the topics exist.
    assert f"touch {ready_marker(topics)}" in topics["args"][0]
