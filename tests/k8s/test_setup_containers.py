"""The containers that create the topics (Kafka pod) and the buckets (MinIO pod), run as written in
the manifests against stand-ins for `kafka-topics.sh` and `mc` that record what they are asked:
everything is created, idempotently, retried while the server starts, and only then does the
container turn ready (and with it the pod, so clients reach a server whose topics/buckets exist)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from shared.events import dlq_topic
from shared.kafka import DEFAULT_PARTITIONS
from tests.k8s.manifests import Resource, Workload, find, setting_defaults

RECORDER = """#!/usr/bin/env python3
import json, os, sys
log = os.environ["RECORD_TO"]
with open(log, "a") as f:
    hosts = {k: v for k, v in os.environ.items() if k.startswith("MC_HOST_")}
    f.write(json.dumps({"argv": sys.argv[1:], "env": hosts}) + "\\n")
calls = sum(1 for _ in open(log))
fail = os.environ.get("FAIL_CALLS", "")
sys.exit(1 if fail == "all" or str(calls) in fail.split(",") else 0)
"""
# `sleep 5` between retries returns at once; the idle loop's long sleep is real.
FAST_SLEEP = """#!/bin/sh
[ "$1" = 5 ] && exit 0
exec /bin/sleep "$@"
"""


def _container(rendered: list[Resource], statefulset: str, name: str) -> dict[str, Any]:
    containers = Workload(find(rendered, "StatefulSet", statefulset)).containers
    [found] = [c for c in containers if c["name"] == name]
    return found


def ready_marker(container: dict[str, Any]) -> str:
    """The file whose existence the container's readiness probe checks."""
    command = " ".join(container["readinessProbe"]["exec"]["command"])
    match = re.search(r"\btest -f (/\S+)", command)
    assert match, f"{container['name']}: readiness is not a marker file: {command}"
    return match.group(1)


def _literal_env(container: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The container's variables as the kubelet gives them, with stand-ins for Secret values."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], entry["value"])
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = secrets[entry["valueFrom"]["secretKeyRef"]["key"]]
    return env


class SetupRun:
    """One run of a setup container's script in a temporary root."""

    def __init__(self, tmp_path: Path, container: dict[str, Any], tool: str, replace: dict[str, str]) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for name, text in ((tool, RECORDER), ("sleep", FAST_SLEEP)):
            path = self.bin / name
            path.write_text(text)
            path.chmod(0o755)
        self.log = tmp_path / "calls.jsonl"
        self.log.touch()
        marker = ready_marker(container)
        self.marker = tmp_path / Path(marker).name
        self.script = container["args"][0].replace(marker, str(self.marker))
        # The readiness probe itself, pointed at the same file.
        probe = container["readinessProbe"]["exec"]["command"]
        self.probe = [part.replace(marker, str(self.marker)) for part in probe]
        for old, new in replace.items():
            self.script = self.script.replace(old, new)
        self.argv = [*container["command"], self.script]

    def start(self, env: dict[str, str]) -> subprocess.Popen[str]:
        full_env = {"PATH": f"{self.bin}:/usr/bin:/bin", "RECORD_TO": str(self.log), **env}
        # A process group of its own: the idle loop's `sleep` is stopped with it.
        return subprocess.Popen(
            self.argv, env=full_env, stderr=subprocess.PIPE, text=True, start_new_session=True
        )

    def probe_passes(self) -> bool:
        return subprocess.run(self.probe, timeout=10, check=False).returncode == 0

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def wait_until_ready(self, process: subprocess.Popen[str], timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.marker.exists():
            assert process.poll() is None, (
                f"exited {process.returncode}: {process.stderr.read() if process.stderr else ''}"
            )
            assert time.monotonic() < deadline, "never turned ready"
            time.sleep(0.05)

    @staticmethod
    def stop(process: subprocess.Popen[str]) -> int:
        """SIGTERM, as the kubelet sends it; the script must leave at once and with 0."""
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def expected_topics() -> list[str]:
    topics = setting_defaults("TOPIC_")
    return sorted([*topics, *(dlq_topic(t) for t in topics)])


def expected_buckets(rendered: list[Resource]) -> list[str]:
    buckets = setting_defaults("BUCKET_")
    [mlflow] = Workload(find(rendered, "Deployment", "mlflow")).containers
    [destination] = [a.split("=", 1)[1] for a in mlflow["args"] if a.startswith("--artifacts-destination=")]
    return sorted(buckets | {destination.removeprefix("s3://").strip("/")})


def _topics_run(rendered: list[Resource], tmp_path: Path) -> tuple[SetupRun, dict[str, str]]:
    container = _container(rendered, "kafka", "topics")
    run = SetupRun(tmp_path, container, "kafka-topics.sh", {"/opt/kafka/bin/": f"{tmp_path}/bin/"})
    return run, _literal_env(container, {})


def test_topics_container_creates_every_topic_once_ready_and_retries_a_starting_broker(
    rendered: list[Resource], tmp_path: Path
) -> None:
    run, env = _topics_run(rendered, tmp_path)
    # The broker is still starting: the first two attempts fail.
    process = run.start({**env, "FAIL_CALLS": "1,2"})
    try:
        run.wait_until_ready(process)
        assert run.probe_passes()
        calls = [c["argv"] for c in run.calls()]
    finally:
        assert SetupRun.stop(process) == 0
    created = []
    for argv in calls:
        options = dict(zip(argv[::2], argv[1::2], strict=False))
        assert "--create" in argv and "--if-not-exists" in argv, argv
        assert options["--bootstrap-server"] == "localhost:9092"
        assert int(options["--partitions"]) == DEFAULT_PARTITIONS
        created.append(options["--topic"])
    assert len(calls) == len(expected_topics()) + 2
    assert sorted(set(created)) == expected_topics()


def test_topics_container_gives_up_without_turning_ready(rendered: list[Resource], tmp_path: Path) -> None:
    """Past CREATE_TIMEOUT_S it exits non-zero (the kubelet restarts it) and the pod stays unready."""
    run, env = _topics_run(rendered, tmp_path)
    process = run.start({**env, "CREATE_TIMEOUT_S": "0", "FAIL_CALLS": "all"})
    assert process.wait(timeout=30) == 1
    assert not run.marker.exists() and not run.probe_passes()


# Stand-ins for the Secret's values.
SECRETS = {"access-key": "test-access", "secret-key": "test-secret-value"}


def _buckets_run(rendered: list[Resource], tmp_path: Path) -> tuple[SetupRun, dict[str, str]]:
    container = _container(rendered, "minio", "buckets")
    run = SetupRun(tmp_path, container, "mc", {})
    return run, _literal_env(container, SECRETS)


def test_buckets_container_creates_every_bucket_once_ready_with_keys_from_the_environment(
    rendered: list[Resource], tmp_path: Path
) -> None:
    run, env = _buckets_run(rendered, tmp_path)
    # MinIO is still starting: the first attempt fails.
    process = run.start({**env, "FAIL_CALLS": "1"})
    try:
        run.wait_until_ready(process)
        assert run.probe_passes()
        calls = run.calls()
    finally:
        assert SetupRun.stop(process) == 0
    [port] = [
        p["containerPort"] for p in _container(rendered, "minio", "minio")["ports"] if p["name"] == "s3"
    ]
    buckets = []
    for call in calls:
        verb, flag, target = call["argv"]
        assert (verb, flag) == ("mb", "--ignore-existing")
        alias, _, bucket = target.partition("/")
        # The alias and its keys come from MC_HOST_<alias>, never from the command line.
        userinfo = ":".join((SECRETS["access-key"], SECRETS["secret-key"]))
        assert call["env"] == {f"MC_HOST_{alias}": "http://" + userinfo + f"@127.0.0.1:{port}"}
        buckets.append(bucket)
    assert len(calls) == len(expected_buckets(rendered)) + 1
    assert sorted(set(buckets)) == expected_buckets(rendered)


def test_buckets_container_gives_up_without_turning_ready(rendered: list[Resource], tmp_path: Path) -> None:
    run, env = _buckets_run(rendered, tmp_path)
    process = run.start({**env, "MAX_FAILURES": "2", "FAIL_CALLS": "all"})
    assert process.wait(timeout=30) == 1
    assert not run.marker.exists() and not run.probe_passes()
    assert len(run.calls()) == 2


@pytest.mark.parametrize(("statefulset", "name"), [("kafka", "topics"), ("minio", "buckets")])
def test_setup_containers_run_again_with_every_pod(
    rendered: list[Resource], statefulset: str, name: str
) -> None:
    """A container of the server's own pod, not a Job: it runs on every (re)start of the pod and
    is never an immutable, finished object that a re-apply trips over."""
    container = _container(rendered, statefulset, name)
    script = container["args"][0]
    marker = ready_marker(container)
    # A restarted container starts unready, whatever an earlier run left in its /tmp.
    assert script.index(f"rm -f {marker}") < script.index(f"touch {marker}")
    assert container["startupProbe"]["exec"]["command"] == container["readinessProbe"]["exec"]["command"]
