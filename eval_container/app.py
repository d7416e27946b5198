"""Wiring of the evaluator process: clients, health server, consumer loop."""

from __future__ import annotations

import logging
import threading

from eval_container.health import HealthState, start_health_server
from eval_container.service import Evaluator
from eval_container.settings import EvaluatorSettings
from shared.events import TrainingEvent, dlq_topic
from shared.kafka import (
    ConsumerLoop,
    EventProducer,
    RetriesExhausted,
    TransientError,
    ensure_topics,
    wait_for_broker,
)
from shared.mlflow_utils import configure_mlflow_client, connect, mlflow_answers, wait_for_mlflow
from shared.storage import ObjectStore

log = logging.getLogger(__name__)

SERVICE = "evaluator"


def run(settings: EvaluatorSettings, stop: threading.Event) -> int:
    """Consume `model-training` until `stop` is set; return the process exit code."""
    try:
        wait_for_broker(settings.KAFKA_BOOTSTRAP_SERVERS, settings.STARTUP_TIMEOUT_S)
        wait_for_mlflow(settings.MLFLOW_TRACKING_URI, settings.STARTUP_TIMEOUT_S)
        ensure_topics(
            settings.KAFKA_BOOTSTRAP_SERVERS,
            [
                settings.TOPIC_MODEL_TRAINING,
                settings.TOPIC_MODEL_SELECTED,
                settings.TOPIC_PROMOTION_DECISIONS,
                dlq_topic(settings.TOPIC_MODEL_TRAINING),
            ],
        )
        store = ObjectStore.from_settings(settings)
        store.ensure_bucket(settings.BUCKET_PROMOTION)
    except TransientError as exc:
        log.error("dependencies not reachable at start-up", extra={"error": str(exc)})
        return 1

    configure_mlflow_client()
    client = connect(settings.MLFLOW_TRACKING_URI)
    producer = EventProducer(settings.KAFKA_BOOTSTRAP_SERVERS, client_id=SERVICE)
    evaluator = Evaluator(settings, store, client, producer)
    evaluator.restore()

    health = HealthState(lambda: mlflow_answers(settings.MLFLOW_TRACKING_URI, timeout_s=2.0))
    server = start_health_server(settings.HEALTH_PORT, health)
    loop = ConsumerLoop.from_settings(
        settings,
        group_id=settings.CONSUMER_GROUP,
        topics={settings.TOPIC_MODEL_TRAINING: TrainingEvent},
        handler=evaluator.handle,
        service=SERVICE,
        producer=producer,
        stop=stop,
        on_idle=evaluator.on_idle,
    )
    health.consuming.set()
    try:
        loop.run()
    except RetriesExhausted as exc:
        log.error("giving up after repeated transient errors", extra={"error": str(exc)})
        return 1
    finally:
        health.consuming.clear()
        producer.close()
        server.shutdown()
    log.info("evaluator stopped")
    return 0
