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
from shared.settings.base import BaseServiceSettings
from tests.k8s.dockerfiles import final_stage
from tests.k8s.manifests import Resource, Workload, find


def _container(rendered: list[Resource], kind: str, name: str) -> dict[str, Any]:
    [container] = Workload(find(rendered, kind, name)).containers
    return container


def _expand(args: list[str]) -> list[str]:
    # The kubelet substitutes $(VAR) from the container's env; any text stands in offline.
    return [re.sub(r"\$\((\w+)\)", lambda m: m.group(1).lower(), a) for a in args]


# Importing mlflow's CLI configures SQLAlchemy mappers, which warn about mlflow's own code.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_mlflow_server_accepts_the_manifest_arguments(rendered: list[Resource]) -> None:
    from mlflow.cli import server

    container = _container(rendered, "Deployment", "mlflow")
    [entrypoint] = final_stage("mlflow").all("ENTRYPOINT")
    assert entrypoint.exec_form() == ["mlflow", "server"]
    params = server.make_context("server", _expand(container["args"])).params
    assert params["host"] == "0.0.0.0"
    assert params["port"] == container["ports"][0]["containerPort"]
    assert params["serve_artifacts"] is True
    assert params["artifacts_destination"] == "s3://mlflow/"
    assert params["backend_store_uri"].startswith("postgresql://")
    assert "@postgres:5432/" in params["backend_store_uri"]


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
    # `kubectl port-forward svc/mlflow 5000:5000` and the image's HEALTHCHECK.
    assert is_allowed_host_header(hosts, "localhost:5000")
    assert is_allowed_host_header(hosts, "127.0.0.1:5000")
    assert not is_allowed_host_header(hosts, "attacker.example:5000")


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


def _script(rendered: list[Resource], job: str) -> str:
    container = _container(rendered, "Job", job)
    return " ".join(container["args"])


def test_topics_job_creates_the_topics_the_services_use(rendered: list[Resource]) -> None:
    script = _script(rendered, "kafka-topics")
    [loop] = re.findall(r"for topic in ([^;]+);", script)
    topics = set(loop.split())
    fields = BaseServiceSettings.model_fields
    expected = {fields[name].default for name in fields if name.startswith("TOPIC_")}
    assert topics == expected
    # The DLQ names come from the same rule the consumers use.
    assert all(dlq_topic(t) == f"DLQ-{t}" for t in topics) and '"DLQ-$topic"' in script


def test_bucket_job_creates_the_buckets_the_services_and_mlflow_use(rendered: list[Resource]) -> None:
    script = _script(rendered, "minio-buckets")
    [loop] = re.findall(r"for bucket in ([^;]+);", script)
    buckets = set(loop.split())
    fields = BaseServiceSettings.model_fields
    expected = {fields[name].default for name in fields if name.startswith("BUCKET_")}
    mlflow_args = _container(rendered, "Deployment", "mlflow")["args"]
    [destination] = [a.split("=", 1)[1] for a in mlflow_args if a.startswith("--artifacts-destination=")]
    expected.add(destination.removeprefix("s3://").strip("/"))
    assert buckets == expected
