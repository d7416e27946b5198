"""A trainer trusts the object store, not MLflow's memory of it.

MLflow can list a FINISHED run whose files are gone (a restarted embedded S3 server, an object store
restored without its database). A GRU trainer, a real process on the session stack, gets a claim it
has trained before: with the run's artifacts in place it acknowledges without retraining; with them
deleted from the object store (all of them, or only the weights) it trains a new run and logs why,
naming the run and the missing file. An evaluator, a real process too, refuses the run whose files
are gone, saying why in the decision and its log, and promotes the run the trainer trained again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flts_cli.stack import MLFLOW_BUCKET, StackConfig
from shared import promotion
from shared.events import DataClaim, DecisionOutcome, ModelType, TrainingEvent, TrainingStatus
from shared.kafka import EventProducer, ensure_topics
from shared.mlflow_utils import missing_model_artifacts, required_model_artifacts
from shared.storage import ObjectStore
from tests.helpers.processes import ServiceProcess
from tests.helpers.waiting import wait_until
from tests.integration.test_evaluator import EvaluatorProcess, Harness, Topics, evaluator_env
from tests.integration.test_trainers import EventReader, isolated, write_processed

TRAIN_TIMEOUT_S = 150.0
RETRAIN_MESSAGE = "claim was trained, but the run's model artifacts are missing; retraining"
UNLOADABLE_MESSAGE = "run lacks its model artifacts; it cannot be promoted"


@pytest.fixture
def gru_trainer(
    stack: StackConfig, service_env: dict[str, str], object_store: ObjectStore, tmp_path: Path
) -> Iterator[tuple[ServiceProcess, str, str, str]]:
    """A tiny GRU trainer on its own claims topic, events topic and processed-data bucket."""
    names = isolated(stack, service_env, object_store)
    env = {
        **names.env,
        "MODEL_TYPE": "GRU",
        "KAFKA_GROUP_ID": f"trainer-gru-{names.suffix}",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "EPOCHS": "1",
        "HIDDEN_SIZE": "8",
        "NUM_LAYERS": "1",
        "HANDLER_RETRY_BACKOFF_S": "0.2",
        "MLFLOW_RETRY_BACKOFF_S": "0.2",
    }
    trainer = ServiceProcess("train_container", env, tmp_path / "gru.log").start()
    try:
        yield trainer, names.topic_claims, names.topic_events, names.bucket
    finally:
        trainer.stop()


def successes(reader: EventReader, config_hash: str) -> list[TrainingEvent]:
    events = (TrainingEvent.model_validate(m) for m in reader.seen)
    return [e for e in events if e.config_hash == config_hash and e.status == TrainingStatus.SUCCESS]


def runs_started(reader: EventReader, config_hash: str) -> set[str | None]:
    events = (TrainingEvent.model_validate(m) for m in reader.seen)
    return {e.run_id for e in events if e.config_hash == config_hash and e.status == TrainingStatus.RUNNING}


def delete_artifacts(store: ObjectStore, run_id: str, suffix: str = "") -> list[str]:
    """Delete the run's artifact objects whose path ends with `suffix` (all of them for "")."""
    keys = [
        key
        for key in store.list_keys(MLFLOW_BUCKET)
        if f"/{run_id}/artifacts/" in key and key.endswith(suffix)
    ]
    for key in keys:
        store.client.delete_object(Bucket=MLFLOW_BUCKET, Key=key)
    return keys


def claim_again_and_wait(
    producer: EventProducer,
    reader: EventReader,
    trainer: ServiceProcess,
    topic_claims: str,
    claim: DataClaim,
    count: int,
) -> TrainingEvent:
    """Publish `claim` and return the SUCCESS event that makes `count` of them for its hash."""
    producer.publish(topic_claims, claim.config_hash, claim)
    try:
        reader.until(
            lambda _seen: len(successes(reader, claim.config_hash)) >= count,
            TRAIN_TIMEOUT_S,
            f"SUCCESS number {count}",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{trainer.tail()}") from None
    return successes(reader, claim.config_hash)[count - 1]


def retrain_records(trainer: ServiceProcess) -> list[dict[str, object]]:
    return [r for r in trainer.log_records() if r.get("msg") == RETRAIN_MESSAGE]


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_trainer_retrains_a_finished_run_whose_model_artifacts_were_deleted_and_logs_why(
    gru_trainer: tuple[ServiceProcess, str, str, str], stack: StackConfig, object_store: ObjectStore
) -> None:
    trainer, topic_claims, topic_events, bucket = gru_trainer
    config_hash = uuid.uuid4().hex + uuid.uuid4().hex
    claim = write_processed(object_store, bucket, config_hash)
    client = MlflowClient(stack.mlflow_url)
    reader = EventReader(stack.kafka_bootstrap, topic_events)
    producer = EventProducer(stack.kafka_bootstrap, client_id="test-self-healing")
    try:
        first = claim_again_and_wait(producer, reader, trainer, topic_claims, claim, 1).run_id
        assert first is not None
        # What the helper requires is exactly what a trainer logs: nothing is missing.
        assert missing_model_artifacts(client, first, "GRU") == []

        # Artifacts in place: acknowledged with the same run, nothing trained.
        again = claim_again_and_wait(producer, reader, trainer, topic_claims, claim, 2)
        assert again.run_id == first and runs_started(reader, config_hash) == {first}
        assert retrain_records(trainer) == []

        # Every file of the run gone from the object store, while MLflow still lists the run.
        assert delete_artifacts(object_store, first), "the run had artifacts in the mlflow bucket"
        assert client.get_run(first).info.status == "FINISHED"
        assert missing_model_artifacts(client, first, "GRU") == list(required_model_artifacts("GRU"))

        healed = claim_again_and_wait(producer, reader, trainer, topic_claims, claim, 3).run_id
        assert healed is not None and healed != first
        assert runs_started(reader, config_hash) == {first, healed}
        assert missing_model_artifacts(client, healed, "GRU") == []
        assert client.get_run(healed).info.status == "FINISHED"
        [record] = retrain_records(trainer)
        assert record["run_id"] == first and record["level"] == "WARNING"
        assert "GRU/MLmodel" in str(record["missing"]) and first in str(record["reason"])
        assert "GRU/MLmodel" in client.get_run(first).data.tags["artifacts_missing"]

        # Only the weights gone: that alone is enough to train again, and the log names the file.
        assert len(delete_artifacts(object_store, healed, "/state_dict.pt")) == 1
        assert missing_model_artifacts(client, healed, "GRU") == ["GRU/artifacts/model/state_dict.pt"]
        third = claim_again_and_wait(producer, reader, trainer, topic_claims, claim, 4).run_id
        assert third not in (None, first, healed)
        records = retrain_records(trainer)
        assert len(records) == 2 and records[1]["run_id"] == healed
        assert records[1]["missing"] == ["GRU/artifacts/model/state_dict.pt"]
    finally:
        reader.close()
        producer.close()
    assert trainer.alive(), trainer.tail()


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_evaluator_refuses_a_run_whose_files_are_gone_and_promotes_the_run_trained_again(
    gru_trainer: tuple[ServiceProcess, str, str, str],
    stack: StackConfig,
    service_env: dict[str, str],
    object_store: ObjectStore,
    tmp_path: Path,
) -> None:
    trainer, topic_claims, topic_events, bucket = gru_trainer
    config_hash = uuid.uuid4().hex + uuid.uuid4().hex
    claim = write_processed(object_store, bucket, config_hash)
    client = MlflowClient(stack.mlflow_url)
    reader = EventReader(stack.kafka_bootstrap, topic_events)
    producer = EventProducer(stack.kafka_bootstrap, client_id="test-self-healing-evaluator")
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(
        training=topic_events,
        selected=f"model-selected-{suffix}",
        decisions=f"promotion-decisions-{suffix}",
        bucket=f"model-promotion-{suffix}",
        group=f"evaluator-{suffix}",
    )
    ensure_topics(stack.kafka_bootstrap, [topics.selected, topics.decisions])
    object_store.ensure_bucket(topics.bucket)
    harness = Harness(stack, object_store, topics)
    # One epoch on a small sample need not beat persistence: the gate is not what is tested.
    env = evaluator_env(
        service_env, topics, EXPECTED_MODEL_TYPES="GRU", SKILL_GATE="false", PROMOTION_TIMEOUT_S="2"
    )
    evaluator = EvaluatorProcess(env, tmp_path / "evaluator.log")
    try:
        broken = claim_again_and_wait(producer, reader, trainer, topic_claims, claim, 1).run_id
        assert broken is not None
        assert delete_artifacts(object_store, broken), "the run had artifacts in the mlflow bucket"

        # Started now, the evaluator reads the trainer's SUCCESS from the start of the topic.
        evaluator.start_ready()
        wait_until(lambda: harness.decisions(claim.identifier), 60, "the evaluator's decision")
        (refusal,) = harness.decisions(claim.identifier)
        assert refusal.decision is DecisionOutcome.REFUSED, evaluator.tail()
        assert f"run {broken} lacks its model artifacts GRU/MLmodel" in refusal.reason
        assert [(c.model_type, c.name, c.passed) for c in refusal.checks] == [
            (ModelType.GRU, "model_artifacts", False)
        ]
        assert harness.selected(claim.identifier) == []
        [warning, *_] = [r for r in evaluator.log_records() if r.get("msg") == UNLOADABLE_MESSAGE]
        assert warning["level"] == "WARNING" and warning["run_id"] == broken
        assert "GRU/artifacts/model/state_dict.pt" in warning["missing"]
        assert "MLflow still lists the run, but its files are gone" in str(warning["reason"])

        # The claim again: the trainer trains a new run, which the evaluator promotes.
        healed = claim_again_and_wait(producer, reader, trainer, topic_claims, claim, 2).run_id
        assert healed not in (None, broken)
        assert missing_model_artifacts(client, healed, "GRU") == []
        wait_until(lambda: len(harness.decisions(claim.identifier)) == 2, 60, "the follow-up decision")
        promoted = harness.decisions(claim.identifier)[1]
        assert promoted.promoted and promoted.run_id == healed, evaluator.tail()
        assert [m["run_id"] for m in harness.selected(claim.identifier)] == [healed]
        live = promotion.load_current_pointer(object_store, topics.bucket, claim.identifier)
        assert live is not None and live.run_id == healed
    finally:
        reader.close()
        producer.close()
        code = evaluator.stop()
    assert code == 0, evaluator.tail()
    assert trainer.alive(), trainer.tail()
