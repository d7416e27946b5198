"""Poison on every consumed topic, against the real service processes.

Each consumer gets, in order: a body that is not JSON, a JSON object of the wrong schema, a valid
message of an unknown schema version (v=2), a payload over 1 MB, a well-formed message that points
at something that does not exist — and then one valid message, which must still be processed.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient

from flts_cli.stack import StackConfig, free_port
from shared.events import (
    DataClaim,
    ModelType,
    PromotionPointer,
    TrainingEvent,
    TrainingStatus,
    dlq_topic,
    to_json_bytes,
)
from shared.kafka import MAX_PAYLOAD_BYTES, EventProducer, ensure_topics
from shared.mlflow_utils import ensure_experiment
from shared.storage import ObjectStore
from tests.helpers.processes import ServiceProcess
from tests.helpers.topics import read_topic
from tests.helpers.waiting import wait_until
from tests.integration.test_evaluator import log_model_files
from tests.integration.test_inference_support import log_model_run, make_pointer, write_pointer
from tests.reliability.conftest import trainer_env
from tests.reliability.support import http_status, unique

HUGE = b'{"pad": "' + b"x" * (MAX_PAYLOAD_BYTES + 50_000) + b'"}'


def poison_bodies(valid: dict[str, Any]) -> dict[str, bytes]:
    """The four shapes of poison every consumer must survive, keyed by what the DLQ must say."""
    return {
        "not valid JSON": b"\x00\xff not json {",
        "schema violation": json.dumps({"v": 1, "hello": "world"}).encode(),
        "unsupported schema version v=2": json.dumps({**valid, "v": 2}).encode(),
        f"exceeds {MAX_PAYLOAD_BYTES}": HUGE,
    }


@pytest.fixture
def producer(stack: StackConfig) -> Iterator[EventProducer]:
    made = EventProducer(stack.kafka_bootstrap, client_id="reliability-poison")
    yield made
    made.close()


def assert_dead_letters(letters: list[dict[str, Any]], expected: list[str]) -> None:
    errors = [str(letter.get("error", "")) for letter in letters]
    for reason in expected:
        assert any(reason in error for error in errors), f"no dead letter says {reason!r}: {errors}"
    for letter in letters:
        assert letter["payload"] is not None and letter["topic"] and letter["offset"] >= 0


@pytest.mark.slow  # a preprocess run, a trainer start and a fit: 25 s alone, the default tier is full
def test_trainer_dead_letters_every_poison_claim_reports_failed_and_trains_the_next_valid_one(
    stack: StackConfig,
    service_env: dict[str, str],
    producer: EventProducer,
    preprocess_small: Callable[..., tuple[DataClaim, dict[str, str]]],
    tmp_path: Path,
) -> None:
    claim, _env = preprocess_small()
    topic = unique("training-data")
    env = trainer_env(service_env, topic)
    ensure_topics(stack.kafka_bootstrap, [topic, dlq_topic(topic), env["TOPIC_MODEL_TRAINING"]])
    valid = claim.model_dump(mode="json")
    missing_hash = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    missing = claim.model_copy(
        update={
            "config_hash": missing_hash,
            "object": f"{missing_hash}/train.parquet",
            "test_object": f"{missing_hash}/test.parquet",
            "meta_object": f"{missing_hash}/meta.json",
        }
    )
    for body in poison_bodies(valid).values():
        producer.publish(topic, claim.config_hash, body)
    producer.publish(topic, missing_hash, missing)
    producer.publish(topic, claim.config_hash, claim)

    trainer = ServiceProcess("train_container", env, tmp_path / "trainer.log").start()
    try:

        def success_seen() -> bool:
            return any(
                v.get("status") == "SUCCESS" and v.get("config_hash") == claim.config_hash
                for _k, v in read_topic(stack.kafka_bootstrap, env["TOPIC_MODEL_TRAINING"])
            )

        trainer.wait_until(
            success_seen, 150, "the valid claim after the poison to be trained", interval_s=1.0
        )
        letters = [v for _k, v in read_topic(stack.kafka_bootstrap, dlq_topic(topic))]
        assert len(letters) == 5, letters
        assert_dead_letters(letters, [*poison_bodies(valid), "does not exist"])
        events = [v for _k, v in read_topic(stack.kafka_bootstrap, env["TOPIC_MODEL_TRAINING"])]
        failed = [e for e in events if e["config_hash"] == missing_hash and e["status"] == "FAILED"]
        assert len(failed) == 1 and failed[0]["error"], events
        assert trainer.alive()
    finally:
        code = trainer.stop()
    assert code == 0, trainer.tail()


def make_finished_run(stack: StackConfig, config_hash: str, identifier: str) -> str:
    client = MlflowClient(tracking_uri=stack.mlflow_url)
    run = client.create_run(
        ensure_experiment(client, "Default"),
        run_name="GRU",
        tags={"config_hash": config_hash, "model_type": "GRU", "identifier": identifier},
    )
    metrics = {
        "val_rmse": 0.05,
        "val_mae": 0.04,
        "val_mse": 0.0025,
        "baseline_val_rmse": 0.1,
        "val_rmse_down": 5.0,
        "val_rmse_up": 2.0,
        "baseline_val_rmse_down": 10.0,
        "baseline_val_rmse_up": 4.0,
        "test_rmse": 0.05,
        "test_mae": 0.04,
        "test_mse": 0.0025,
        "baseline_test_rmse": 0.1,
        "baseline_test_mae": 0.08,
        "baseline_test_mse": 0.01,
        "test_rmse_down": 5.0,
        "test_rmse_up": 2.0,
    }
    run_id: str = run.info.run_id
    for name, value in metrics.items():
        client.log_metric(run_id, name, value)
    # The evaluator promotes only a run whose model files exist.
    log_model_files(client, run_id, ModelType.GRU)
    client.set_terminated(run_id)
    return run_id


def success_event(config_hash: str, identifier: str, run_id: str) -> TrainingEvent:
    return TrainingEvent(
        operation=TrainingEvent.operation_for(TrainingStatus.SUCCESS, ModelType.GRU),
        status=TrainingStatus.SUCCESS,
        model_type=ModelType.GRU,
        experiment="Default",
        run_name="GRU",
        run_id=run_id,
        config_hash=config_hash,
        identifier=identifier,
        metrics={"val_rmse": 0.05},
    )


def test_evaluator_dead_letters_every_poison_event_and_promotes_on_the_next_valid_one(
    stack: StackConfig,
    service_env: dict[str, str],
    producer: EventProducer,
    tmp_path: Path,
) -> None:
    training, selected, bucket = unique("model-training"), unique("model-selected"), unique("promotion")
    decisions = unique("promotion-decisions")
    ensure_topics(stack.kafka_bootstrap, [training, selected, decisions, dlq_topic(training)])
    identifier = unique("poison-eval")
    config_hash = hashlib.sha256(identifier.encode()).hexdigest()
    run_id = make_finished_run(stack, config_hash, identifier)
    valid = success_event(config_hash, identifier, run_id)
    # A SUCCESS whose run does not exist in MLflow: the claim-check points at nothing.
    ghost_hash = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    ghost = success_event(ghost_hash, identifier, uuid.uuid4().hex)
    for body in poison_bodies(valid.model_dump(mode="json")).values():
        producer.publish(training, config_hash, body)
    producer.publish(training, ghost_hash, ghost)
    producer.publish(training, config_hash, valid)
    port = free_port()
    env = {
        **service_env,
        "TOPIC_MODEL_TRAINING": training,
        "TOPIC_MODEL_SELECTED": selected,
        "TOPIC_PROMOTION_DECISIONS": decisions,
        "BUCKET_PROMOTION": bucket,
        "CONSUMER_GROUP": unique("evaluator"),
        "HEALTH_PORT": str(port),
        "EXPECTED_MODEL_TYPES": "GRU",
        "HANDLER_RETRY_BACKOFF_S": "0.2",
        "LOG_LEVEL": "INFO",
    }
    evaluator = ServiceProcess("eval_container", env, tmp_path / "evaluator.log").start()
    try:
        evaluator.wait_until(
            lambda: read_topic(stack.kafka_bootstrap, selected),
            90,
            "a promotion after the poison events",
            interval_s=0.5,
        )
        pointers = [v for k, v in read_topic(stack.kafka_bootstrap, selected) if k == identifier]
        assert [p["run_id"] for p in pointers] == [run_id]
        answers = [v for k, v in read_topic(stack.kafka_bootstrap, decisions) if k == identifier]
        assert [(a["decision"], a["run_id"]) for a in answers] == [("promoted", run_id)]
        letters = [v for _k, v in read_topic(stack.kafka_bootstrap, dlq_topic(training))]
        assert len(letters) == 5, letters
        assert_dead_letters(letters, list(poison_bodies({})))
        ghost_letters = [entry for entry in letters if ghost_hash in entry["payload"]]
        assert len(ghost_letters) == 1 and ghost_letters[0]["error"], letters
        assert http_status(f"http://127.0.0.1:{port}/healthz") == 200
    finally:
        code = evaluator.stop()
    assert code == 0, evaluator.tail()


def test_inference_dead_letters_every_poison_promotion_keeps_serving_and_applies_the_next_valid_one(
    stack: StackConfig,
    service_env: dict[str, str],
    producer: EventProducer,
    object_store: ObjectStore,
    tmp_path: Path,
) -> None:
    store = object_store
    identifier = unique("poison-inf")
    first, second = (log_model_run(stack, tmp_path, identifier=identifier, seed=s) for s in (1, 2))
    topic = unique("model-selected")
    ensure_topics(stack.kafka_bootstrap, [topic, dlq_topic(topic)])
    port = free_port()
    env = {
        **service_env,
        "IDENTIFIERS": identifier,
        "TOPIC_MODEL_SELECTED": topic,
        "BUCKET_PROMOTION": unique("promotion"),
        "INFERENCE_HOST": "127.0.0.1",
        "INFERENCE_PORT": str(port),
        # The first model comes from the live pointer in S3, read at start-up; Kafka brings the rest.
        "POINTER_POLL_S": "600",
        "MODEL_RELOAD_BACKOFF_S": "0.5",
        "MODEL_RELOAD_MAX_BACKOFF_S": "2",
        "LOG_LEVEL": "INFO",
    }
    store.ensure_bucket(env["BUCKET_PROMOTION"])
    write_pointer(store, make_pointer(first, identifier, age_s=60), bucket=env["BUCKET_PROMOTION"])
    server = ServiceProcess("inference_container", env, tmp_path / "inference.log").start()
    url = f"http://127.0.0.1:{port}"
    try:

        def status() -> dict[str, Any]:
            try:
                body: dict[str, Any] = httpx.get(url + "/healthz", timeout=2).json()
            except httpx.HTTPError:
                return {}
            return body

        server.wait_until(lambda: status().get("consumer_assigned"), 90, "the promotion consumer to join")
        server.wait_until(lambda: http_status(url + "/readyz") == 200, 60, "the first model to load")
        # The consumer starts at `latest`: give its first fetch a moment to fix that offset.
        time.sleep(2)

        valid = make_pointer(second, identifier, age_s=30).model_dump(mode="json")
        for body in poison_bodies(valid).values():
            producer.publish(topic, identifier, body)
        # A well-formed pointer at a run that does not exist: loading fails, the old model stays.
        ghost = make_pointer(first, identifier, age_s=20).model_copy(
            update={"run_id": uuid.uuid4().hex, "model_uri": f"runs:/{uuid.uuid4().hex}/GRU"}
        )
        producer.publish(topic, identifier, ghost)
        wait_until(
            lambda: "not found" in str(httpx.get(url + "/model", timeout=2).json().get("last_error")),
            60,
            "the ghost pointer's load to fail",
        )
        assert httpx.get(url + "/model", timeout=2).json()["run_id"] == first.run_id
        fresh = PromotionPointer.model_validate({**valid, "timestamp": datetime.now(UTC).isoformat()})
        producer.publish(topic, identifier, to_json_bytes(fresh))
        wait_until(
            lambda: httpx.get(url + "/model", timeout=2).json().get("run_id") == second.run_id,
            60,
            "the valid promotion after the poison to be served",
        )
        letters = [v for _k, v in read_topic(stack.kafka_bootstrap, dlq_topic(topic))]
        assert len(letters) == 4, letters
        assert_dead_letters(letters, list(poison_bodies({})))
        assert all(letter["service"].startswith("inference:") for letter in letters)
    finally:
        code = server.stop()
    # uvicorn drains, then re-raises the SIGTERM it caught: -15 after "Finished server process".
    assert code in (0, -15) and "Finished server process" in server.log_text(), server.tail()
