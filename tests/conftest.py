"""Session-scoped real infrastructure (broker, S3 server, MLflow server) on free ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flts_cli.stack import LocalStack, StackConfig, free_ports
from shared.events import dlq_topic
from shared.kafka import ensure_topics
from shared.storage import ObjectStore

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """Start the three services once per session; tear them down at the end."""
    kafka_port, s3_port, mlflow_port = free_ports(3)
    config = StackConfig(
        kafka_port=kafka_port,
        s3_port=s3_port,
        mlflow_port=mlflow_port,
        state_dir=tmp_path_factory.mktemp("stack"),
    )
    local = LocalStack(config)
    local.start()
    try:
        yield config
    finally:
        local.stop()


@pytest.fixture(scope="session")
def service_env(stack: StackConfig) -> dict[str, str]:
    """The environment a service process needs to reach the session stack."""
    return {**os.environ, **stack.service_env(), "PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture(scope="session")
def object_store(stack: StackConfig) -> ObjectStore:
    return ObjectStore(stack.s3_url, stack.access_key, stack.secret_key)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Make names (topics, groups, buckets) no other test uses."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
def monkeypatch_stack_env(monkeypatch: pytest.MonkeyPatch, stack: StackConfig) -> StackConfig:
    """Point settings classes read in-process at the session stack."""
    for key, value in stack.service_env().items():
        monkeypatch.setenv(key, value)
    return stack


@pytest.fixture
def make_topic(stack: StackConfig, unique_name: Callable[[str], str]) -> Callable[..., str]:
    """Create a unique topic (and its DLQ) before anyone subscribes: on this broker a consumer
    subscribed to a topic that does not exist yet may not see it for minutes."""

    def make(prefix: str = "topic", partitions: int = 1) -> str:
        topic = unique_name(prefix)
        ensure_topics(stack.kafka_bootstrap, [topic, dlq_topic(topic)], partitions=partitions)
        return topic

    return make
