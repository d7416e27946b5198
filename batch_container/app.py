"""Wiring of the batch forecaster: health server first, then clients, then the consumer loop."""

from __future__ import annotations

import logging
import threading

from batch_container.service import BatchClaim, BatchForecaster
from batch_container.settings import BatchSettings
from shared.events import PromotionPointer, dlq_topic
from shared.health import HealthState, start_health_server, startup_budget_s, stop_health_server
from shared.kafka import (
    TRANSIENT_ERRORS,
    ConsumerLoop,
    EventProducer,
    RetriesExhausted,
    ensure_topics,
    wait_for_broker,
)
from shared.mlflow_utils import configure_mlflow_client, connect, mlflow_answers, wait_for_mlflow
from shared.storage import ObjectStore

log = logging.getLogger(__name__)

SERVICE = "batch-forecast"
# Start-up waits of bounded length (broker, MLflow): the liveness budget and the startupProbe count them.
STARTUP_WAITS = 2


def run(settings: BatchSettings, stop: threading.Event) -> int:
    """Consume claims and promotions until `stop` is set; return the process exit code."""
    # Probes are answered while the dependencies are awaited: a slow start is not a dead pod.
    health = HealthState(
        SERVICE,
        ready_checks={"mlflow": lambda: mlflow_answers(settings.MLFLOW_TRACKING_URI, timeout_s=2.0)},
        startup_budget_s=startup_budget_s(settings.STARTUP_TIMEOUT_S, STARTUP_WAITS),
    )
    server = start_health_server(settings.HEALTH_PORT, health)
    try:
        return _serve(settings, stop, health)
    finally:
        stop_health_server(server)


def _serve(settings: BatchSettings, stop: threading.Event, health: HealthState) -> int:
    claims, promotions = settings.TOPIC_INFERENCE_DATA, settings.TOPIC_MODEL_SELECTED
    try:
        health.waiting_for("kafka")
        wait_for_broker(settings.KAFKA_BOOTSTRAP_SERVERS, settings.STARTUP_TIMEOUT_S)
        health.waiting_for("mlflow")
        wait_for_mlflow(settings.MLFLOW_TRACKING_URI, settings.STARTUP_TIMEOUT_S)
        ensure_topics(
            settings.KAFKA_BOOTSTRAP_SERVERS,
            [claims, promotions, settings.TOPIC_BATCH_FORECASTS, dlq_topic(claims), dlq_topic(promotions)],
        )
        store = ObjectStore.from_settings(settings)
        store.ensure_bucket(settings.BUCKET_BATCH_FORECASTS)
    except TRANSIENT_ERRORS as exc:
        log.error("dependencies not reachable at start-up", extra={"error": str(exc)})
        return 1

    configure_mlflow_client()
    client = connect(settings.MLFLOW_TRACKING_URI)
    producer = EventProducer(settings.KAFKA_BOOTSTRAP_SERVERS, client_id=SERVICE)
    forecaster = BatchForecaster(settings, store, client, producer)
    # One group for every replica: each claim and each promotion is forecast once (inference,
    # which must see every promotion, uses a group per replica instead).
    loop = ConsumerLoop.from_settings(
        settings,
        group_id=settings.CONSUMER_GROUP,
        topics={claims: BatchClaim, promotions: PromotionPointer},
        handler=forecaster.handle,
        service=SERVICE,
        producer=producer,
        stop=stop,
    )
    health.start_consuming(loop)
    try:
        loop.run()
    except RetriesExhausted as exc:
        log.error("giving up after repeated transient errors", extra={"error": str(exc)})
        return 1
    finally:
        health.stop_consuming()
        producer.close()
    log.info("batch forecaster stopped")
    return 0
