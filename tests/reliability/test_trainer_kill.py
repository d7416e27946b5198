"""A trainer killed with SIGKILL mid-training loses nothing and duplicates nothing.

Real preprocess job → real GRU trainer (killed -9 while fitting, then restarted) → real evaluator.
The claim was never committed, so the restarted trainer trains it again; the orphaned RUNNING
run is marked KILLED; exactly one SUCCESS for (config hash, GRU) reaches `model-training`, and the
evaluator promotes exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flts_cli.stack import StackConfig, free_port
from shared.events import DataClaim, dlq_topic
from shared.kafka import ensure_topics
from tests.helpers.processes import ServiceProcess
from tests.helpers.topics import read_topic
from tests.helpers.waiting import wait_until
from tests.reliability.conftest import trainer_env
from tests.reliability.support import unique


@pytest.mark.slow
def test_sigkill_mid_training_retrains_the_claim_once_and_the_evaluator_promotes_once(
    stack: StackConfig,
    service_env: dict[str, str],
    preprocess_small: Callable[..., tuple[DataClaim, dict[str, str]]],
    tmp_path: Path,
) -> None:
    claim, pre_env = preprocess_small()
    training_topic = pre_env["TOPIC_TRAINING_DATA"]
    # Long enough to be caught mid-fit; the restarted trainer keeps its group, so it resumes the claim.
    long_run = trainer_env(service_env, training_topic, EPOCHS="5000", MAX_TRAIN_SECONDS="600")
    events_topic = long_run["TOPIC_MODEL_TRAINING"]
    selected, bucket = unique("model-selected"), unique("promotion")
    ensure_topics(stack.kafka_bootstrap, [events_topic, selected, dlq_topic(events_topic)])
    evaluator = ServiceProcess(
        "eval_container",
        {
            **service_env,
            "TOPIC_MODEL_TRAINING": events_topic,
            "TOPIC_MODEL_SELECTED": selected,
            "BUCKET_PROMOTION": bucket,
            "CONSUMER_GROUP": unique("evaluator"),
            "HEALTH_PORT": str(free_port()),
            "EXPECTED_MODEL_TYPES": "GRU",
            "SKILL_GATE": "false",  # two epochs on 600 rows need not beat persistence
            "LOG_LEVEL": "INFO",
        },
        tmp_path / "evaluator.log",
    ).start()
    first = ServiceProcess("train_container", long_run, tmp_path / "trainer-1.log").start()
    second: ServiceProcess | None = None

    def events(status: str) -> list[dict[str, object]]:
        return [
            v
            for _k, v in read_topic(stack.kafka_bootstrap, events_topic)
            if v.get("status") == status and v.get("config_hash") == claim.config_hash
        ]

    try:
        wait_until(lambda: first.alive() and events("RUNNING"), 120, "the first trainer to start fitting")
        time.sleep(3)  # well inside the fit: thousands of epochs are asked for
        killed_run = events("RUNNING")[0]["run_id"]
        first.kill()
        assert not events("SUCCESS"), "the first trainer finished before it could be killed"

        second = ServiceProcess(
            "train_container", {**long_run, "EPOCHS": "2"}, tmp_path / "trainer-2.log"
        ).start()
        wait_until(lambda: second.alive() and events("SUCCESS"), 180, "the restarted trainer's SUCCESS")
        wait_until(lambda: read_topic(stack.kafka_bootstrap, selected), 60, "the evaluator to promote")
        time.sleep(3)  # room for a duplicate to show up, if there were one

        successes = events("SUCCESS")
        assert len(successes) == 1, successes
        assert successes[0]["run_id"] != killed_run
        promotions = read_topic(stack.kafka_bootstrap, selected)
        assert len(promotions) == 1 and promotions[0][1]["run_id"] == successes[0]["run_id"]
        client = MlflowClient(tracking_uri=stack.mlflow_url)
        assert client.get_run(str(killed_run)).info.status == "KILLED"
        assert client.get_run(str(successes[0]["run_id"])).info.status == "FINISHED"
        assert not read_topic(stack.kafka_bootstrap, dlq_topic(training_topic))
    finally:
        codes = [second.stop() if second else None, evaluator.stop()]
    assert codes == [0, 0], (second.tail() if second else "", evaluator.tail())
