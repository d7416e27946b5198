"""Data directories on persistent volumes are subdirectories, never a volume's root: the root of an
ext4 volume (GKE persistent disks, EBS, Ceph RBD) holds `lost+found`, which Kafka refuses as a log
directory and PostgreSQL's initdb refuses as a non-empty data directory."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from tests.k8s.manifests import Resource, Workload, find


def _container(rendered: list[Resource], name: str) -> dict[str, Any]:
    [found] = [c for c in Workload(find(rendered, "StatefulSet", name)).containers if c["name"] == name]
    return found


def _volume_mounts(rendered: list[Resource], name: str) -> list[PurePosixPath]:
    """Where the StatefulSet's persistent volumes (volumeClaimTemplates) are mounted."""
    statefulset = find(rendered, "StatefulSet", name)
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = _container(rendered, name)["volumeMounts"]
    return [PurePosixPath(m["mountPath"]) for m in mounts if m["name"] in claims]


def assert_below_a_volume_root(directory: str, mounts: list[PurePosixPath], what: str) -> None:
    path = PurePosixPath(directory)
    assert mounts, f"{what}: no persistent volume mounted"
    assert path not in mounts, f"{what} = {path} is a volume's root"
    assert any(mount in path.parents for mount in mounts), f"{what} = {path} is on no persistent volume"


def kafka_log_dirs(rendered: list[Resource]) -> list[str]:
    script = _container(rendered, "kafka")["args"][0]
    [line] = [line.strip() for line in str(script).splitlines() if line.strip().startswith("log.dirs=")]
    return line.removeprefix("log.dirs=").split(",")


def test_kafka_logs_live_in_a_subdirectory_of_its_volume(rendered: list[Resource]) -> None:
    mounts = _volume_mounts(rendered, "kafka")
    script = _container(rendered, "kafka")["args"][0]
    for directory in kafka_log_dirs(rendered):
        assert_below_a_volume_root(directory, mounts, "Kafka's log.dirs")
        # Created before `kafka-storage.sh format` writes its meta.properties there.
        assert script.index(f"mkdir -p /tmp/kafka {directory}") < script.index("kafka-storage.sh format")


def test_postgres_data_lives_in_a_subdirectory_of_its_volume(rendered: list[Resource]) -> None:
    env = {e["name"]: e.get("value") for e in _container(rendered, "postgres")["env"]}
    assert_below_a_volume_root(env["PGDATA"], _volume_mounts(rendered, "postgres"), "PGDATA")


def test_the_check_refuses_a_volume_root() -> None:
    """The checks above can fail: the old `log.dirs=/var/lib/kafka/data` is refused."""
    mounts = [PurePosixPath("/var/lib/kafka/data")]
    assert_below_a_volume_root("/var/lib/kafka/data/kraft-logs", mounts, "ok")
    for wrong in ("/var/lib/kafka/data", "/var/lib/kafka/data/", "/tmp/kafka"):
        try:
            assert_below_a_volume_root(wrong, mounts, "wrong")
        except AssertionError:
            continue
        raise AssertionError(f"{wrong} passed")
