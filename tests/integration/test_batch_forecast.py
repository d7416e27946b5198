"""The batch forecaster as a real process on the real broker, S3 server and MLflow server, fed by
a real GRU trainer and the real evaluator (a tiny GRU, gate off: the test is about the batch).

A test-split claim on `inference-data` waits for the station's first champion; its promotion
forecasts the claim into a Parquet under `<identifier>/<config_hash>/<run_id>.parquet`, with the
batch's errors on the champion's run and an event on `batch-forecasts`. Redelivering the claim
writes nothing; a new champion forecasts the latest claim again; poison goes to the DLQ.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from mlflow.tracking import MlflowClient

from batch_container.forecast import (
    COLUMNS,
    HORIZON,
    KIND,
    ROLLING,
    TIME,
    actual_column,
    forecast_column,
)
from batch_container.keys import forecast_key, latest_claim_key, record_key
from flts_cli.stack import StackConfig, free_port
from shared.data import KPI_COLUMNS
from shared.events import DataClaim, dlq_topic
from shared.kafka import EventProducer, ensure_topics
from shared.model_runtime.pyfunc import HORIZON_PARAM, window_frame
from shared.processed import load_meta
from shared.storage import ObjectStore
from tests.helpers.processes import ServiceProcess
from tests.helpers.topics import read_topic
from tests.integration.test_evaluator import EvaluatorProcess, evaluator_env, make_topics
from tests.integration.test_trainers import isolated, write_processed

STATION = "PobleSec"  # what write_processed's claims carry
HORIZON_STEPS = 12
PIPELINE_TIMEOUT_S = 300.0


@dataclass
class Batch:
    """The processes and names of this module, and the first claim's batch."""

    stack: StackConfig
    store: ObjectStore
    claims_topic: str
    batch_topic: str
    batch_bucket: str
    group: str
    training_topic: str
    processed_bucket: str
    service: ServiceProcess
    claim: DataClaim
    first_run_id: str

    def events(self) -> list[dict[str, Any]]:
        return [value for _, value in read_topic(self.stack.kafka_bootstrap, self.batch_topic)]

    def event_for(self, config_hash: str, run_id: str) -> dict[str, Any] | None:
        found = [e for e in self.events() if (e["config_hash"], e["run_id"]) == (config_hash, run_id)]
        return found[-1] if found else None

    def wait_for_batch(self, config_hash: str, run_id: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def published() -> bool:
            event = self.event_for(config_hash, run_id)
            if event is not None:
                found.append(event)
            return event is not None

        self.service.wait_until(published, PIPELINE_TIMEOUT_S, f"the batch of {config_hash[:8]} by {run_id}")
        return found[-1]

    def caught_up(self, topic: str) -> bool:
        """The service's group committed every message now on `topic`."""
        consumer = Consumer({"bootstrap.servers": self.stack.kafka_bootstrap, "group.id": self.group})
        try:
            partitions = consumer.list_topics(timeout=10).topics[topic].partitions
            ends = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
            }
            committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
            return all(tp.offset >= ends[tp.partition] for tp in committed if ends[tp.partition] > 0)
        finally:
            consumer.close()

    def head(self, key: str) -> tuple[str, Any]:
        answer = self.store.client.head_object(Bucket=self.batch_bucket, Key=key)
        return answer["ETag"], answer["LastModified"]


def _probe(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def batch(
    stack: StackConfig,
    service_env: dict[str, str],
    object_store: ObjectStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Batch]:
    names = isolated(stack, service_env, object_store)
    topics = make_topics(stack, object_store)
    logs = tmp_path_factory.mktemp("batch-logs")
    suffix = uuid.uuid4().hex[:8]
    claims_topic, batch_topic = f"inference-data-{suffix}", f"batch-forecasts-{suffix}"
    # One partition: "caught up" is then one committed offset per topic.
    ensure_topics(stack.kafka_bootstrap, [claims_topic, dlq_topic(claims_topic), batch_topic], partitions=1)
    health_port = free_port()
    service = ServiceProcess(
        "batch_container",
        {
            **service_env,
            "TOPIC_INFERENCE_DATA": claims_topic,
            "TOPIC_MODEL_SELECTED": topics.selected,
            "TOPIC_BATCH_FORECASTS": batch_topic,
            "BUCKET_PROMOTION": topics.bucket,
            # Not created here: the service makes its bucket at start-up.
            "BUCKET_BATCH_FORECASTS": f"batch-forecasts-{suffix}",
            "CONSUMER_GROUP": f"batch-forecast-{suffix}",
            "BATCH_HORIZON": str(HORIZON_STEPS),
            "HEALTH_PORT": str(health_port),
            "HANDLER_RETRY_BACKOFF_S": "0.2",
            "KAFKA_FETCH_WAIT_MAX_MS": "10",
        },
        logs / "batch.log",
        name="batch-forecast",
    )
    trainer = ServiceProcess(
        "train_container",
        {
            **names.env,
            "MODEL_TYPE": "GRU",
            "KAFKA_GROUP_ID": f"trainer-gru-{suffix}",
            "EPOCHS": "2",
            "HIDDEN_SIZE": "8",
        },
        logs / "trainer.log",
        name="trainer-GRU",
    )
    evaluator = EvaluatorProcess(
        evaluator_env(
            service_env,
            topics,
            TOPIC_MODEL_TRAINING=names.topic_events,
            EXPECTED_MODEL_TYPES="GRU",
            SKILL_GATE="false",
            REGISTERED_MODEL_PREFIX=f"flts-{suffix}-",
        ),
        logs / "evaluator.log",
    )
    try:
        service.start().wait_until(lambda: _probe(health_port, "/readyz") == 200, 90, "batch /readyz")
        evaluator.start_ready(60)
        trainer.start()
        config_hash = uuid.uuid4().hex + uuid.uuid4().hex
        training_claim = write_processed(object_store, names.bucket, config_hash)
        # inference-data carries the same claim shape, its object the test split (preprocess does so).
        claim = training_claim.model_copy(
            update={"object": training_claim.test_object, "rows": training_claim.test_rows}
        )
        producer = EventProducer(stack.kafka_bootstrap, client_id="test-batch")
        state = Batch(
            stack=stack,
            store=object_store,
            claims_topic=claims_topic,
            batch_topic=batch_topic,
            batch_bucket=f"batch-forecasts-{suffix}",
            group=f"batch-forecast-{suffix}",
            training_topic=names.topic_claims,
            processed_bucket=names.bucket,
            service=service,
            claim=claim,
            first_run_id="",
        )
        # The claim first, handled before anything is trained: with no champion it is only
        # remembered, and the promotion of the first champion forecasts it.
        producer.publish(claims_topic, STATION, claim)
        service.wait_until(lambda: state.caught_up(claims_topic), 60, "the first claim's commit")
        assert state.events() == []
        producer.publish(names.topic_claims, STATION, training_claim)
        events: list[dict[str, Any]] = []

        def first_batch() -> bool:
            events.extend(state.events())
            return bool(events)

        try:
            service.wait_until(first_batch, PIPELINE_TIMEOUT_S, "the first batch forecast")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{trainer.tail()}\n{evaluator.tail()}") from None
        state.first_run_id = events[0]["run_id"]
        yield state
    finally:
        for process in (trainer, evaluator, service):
            process.stop()


def _split_in_original_units(batch: Batch) -> pd.DataFrame:
    claim = batch.claim
    test = batch.store.get_parquet(claim.bucket, claim.test_object)
    meta = load_meta(batch.store, claim.bucket, claim.meta_object)
    return pd.DataFrame(
        meta.scaler.inverse_array(test[list(KPI_COLUMNS)].to_numpy(dtype=np.float64)),
        index=test.index,
        columns=list(KPI_COLUMNS),
    )


def test_a_claim_leaves_a_parquet_of_the_split_with_rolling_and_horizon_forecasts(batch: Batch) -> None:
    event = batch.event_for(batch.claim.config_hash, batch.first_run_id)
    assert event is not None
    key = forecast_key(STATION, batch.claim.config_hash, batch.first_run_id)
    assert (event["bucket"], event["object"], event["trigger"]) == (batch.batch_bucket, key, "promotion")
    frame = batch.store.get_parquet(batch.batch_bucket, key)
    split = _split_in_original_units(batch)
    assert tuple(frame.columns) == COLUMNS
    assert len(frame) == len(split) + HORIZON_STEPS
    assert (event["rows"], event["horizon"]) == (len(split), HORIZON_STEPS)
    rolling, ahead = frame[frame[KIND] == ROLLING], frame[frame[KIND] == HORIZON]
    np.testing.assert_array_equal(
        rolling[TIME].to_numpy(dtype="datetime64[ns]"), split.index.to_numpy(dtype="datetime64[ns]")
    )
    np.testing.assert_allclose(rolling[[actual_column(k) for k in KPI_COLUMNS]].to_numpy(), split.to_numpy())
    predicted = rolling[[forecast_column(k) for k in KPI_COLUMNS]].to_numpy()
    assert np.isnan(predicted[:10]).all() and np.isfinite(predicted[10:]).all()
    last = split.index[-1]
    expected = last + pd.to_timedelta(np.arange(1, HORIZON_STEPS + 1) * 120, "s")
    np.testing.assert_array_equal(ahead[TIME].to_numpy(dtype="datetime64[ns]"), expected.values)
    assert np.isfinite(ahead[[forecast_column(k) for k in KPI_COLUMNS]].to_numpy()).all()


def test_the_batch_errors_are_logged_on_the_champions_run(batch: Batch) -> None:
    run = MlflowClient(batch.stack.mlflow_url).get_run(batch.first_run_id)
    event = batch.event_for(batch.claim.config_hash, batch.first_run_id)
    assert event is not None
    for name in ("batch_rmse_down", "batch_rmse_up", "baseline_batch_rmse_down", "baseline_batch_rmse_up"):
        assert run.data.metrics[name] == pytest.approx(event["metrics"][name])
        assert np.isfinite(run.data.metrics[name]) and run.data.metrics[name] > 0
    key = forecast_key(STATION, batch.claim.config_hash, batch.first_run_id)
    assert run.data.tags["batch_forecast_object"] == f"s3://{batch.batch_bucket}/{key}"


def test_redelivering_the_claim_writes_nothing_new(batch: Batch) -> None:
    claim = batch.claim
    keys = [
        forecast_key(STATION, claim.config_hash, batch.first_run_id),
        record_key(STATION, claim.config_hash, batch.first_run_id),
        latest_claim_key(STATION),
    ]
    before = {key: batch.head(key) for key in keys}
    events_before = len(batch.events())
    # The very same message again, as after a consumer restart before its commit.
    EventProducer(batch.stack.kafka_bootstrap, client_id="test-batch").publish(
        batch.claims_topic, STATION, claim
    )
    batch.service.wait_until(
        lambda: batch.caught_up(batch.claims_topic), 60, "the redelivered claim's commit"
    )
    assert {key: batch.head(key) for key in keys} == before
    assert len(batch.events()) == events_before


def test_a_poison_claim_goes_to_the_dlq_and_the_consumer_goes_on(batch: Batch) -> None:
    producer = Producer({"bootstrap.servers": batch.stack.kafka_bootstrap})
    producer.produce(batch.claims_topic, key=STATION.encode(), value=b'{"v": 1, "bucket": ')
    producer.flush(10)
    # A valid message behind it: committed only if the loop went on past the poison.
    EventProducer(batch.stack.kafka_bootstrap, client_id="test-batch").publish(
        batch.claims_topic, STATION, batch.claim.model_copy(update={"event_id": uuid.uuid4().hex})
    )
    batch.service.wait_until(lambda: batch.caught_up(batch.claims_topic), 60, "the claims after the poison")
    letters = [v for _, v in read_topic(batch.stack.kafka_bootstrap, dlq_topic(batch.claims_topic))]
    assert any(
        letter["service"] == "batch-forecast" and "not valid JSON" in letter["error"] for letter in letters
    ), letters
    assert batch.service.alive()


def test_a_new_champion_for_the_station_forecasts_its_latest_claim_again(
    batch: Batch,
    monkeypatch_stack_env: StackConfig,  # MLFLOW_TRACKING_URI for pyfunc, as a user sets it
) -> None:
    # A second config hash trained and promoted; its split is not claimed on inference-data, so
    # the station's latest claim is still the first one.
    second_hash = uuid.uuid4().hex + uuid.uuid4().hex
    training_claim = write_processed(batch.store, batch.processed_bucket, second_hash)
    EventProducer(batch.stack.kafka_bootstrap, client_id="test-batch").publish(
        batch.training_topic, STATION, training_claim
    )

    def new_champion() -> str | None:
        found = [e for e in batch.events() if e["run_id"] != batch.first_run_id]
        return found[-1]["run_id"] if found else None

    batch.service.wait_until(new_champion, PIPELINE_TIMEOUT_S, "a batch by the new champion")
    run_id = new_champion()
    assert run_id is not None
    event = batch.event_for(batch.claim.config_hash, run_id)
    assert event is not None and event["trigger"] == "promotion"
    key = forecast_key(STATION, batch.claim.config_hash, run_id)
    frame = batch.store.get_parquet(batch.batch_bucket, key)
    # The horizon is that champion's forecast: its MLflow model answers the split's last window so.
    split = _split_in_original_units(batch)
    window = window_frame(split.index[-10:].to_numpy(dtype="datetime64[ns]"), split.to_numpy()[-10:])
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/GRU")
    answer = model.predict(window, params={HORIZON_PARAM: HORIZON_STEPS})
    ahead = frame[frame[KIND] == HORIZON][[forecast_column(k) for k in KPI_COLUMNS]].to_numpy()
    np.testing.assert_allclose(ahead, answer[list(KPI_COLUMNS)].to_numpy(dtype=np.float64), rtol=1e-6)
    # The first champion's batch stays as it was.
    assert batch.store.exists(
        batch.batch_bucket, forecast_key(STATION, batch.claim.config_hash, batch.first_run_id)
    )
    assert json.loads(batch.store.get_bytes(batch.batch_bucket, latest_claim_key(STATION)))[
        "config_hash"
    ] == (batch.claim.config_hash)
