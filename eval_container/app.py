"""Wiring of the evaluator process: health server, clients, consumer loop."""

from __future__ import annotations

import logging
import threading

from eval_container.health import HealthState, start_health_server, stop_health_server
from eval_container.service import Evaluator
from eval_container.settings import EvaluatorSettings
from shared.events import TrainingEvent, dlq_topic
from shared.health import startup_budget_s
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
# Bounded start-up waits, each up to STARTUP_TIMEOUT_S: the broker and MLflow.
STARTUP_WAITS = 2


def run(settings: EvaluatorSettings, stop: threading.Event) -> int:
    """Consume `model-training` until `stop` is set; return the process exit code.

    The health server answers from the first moment, so a startupProbe sees a live process while
    it waits for the broker and MLflow (bounded), and /readyz stays 503 until it consumes.
    """
    health = HealthState(
        lambda: mlflow_answers(settings.MLFLOW_TRACKING_URI, timeout_s=2.0),
        startup_budget_s=startup_budget_s(settings.STARTUP_TIMEOUT_S, STARTUP_WAITS),
    )
    server = start_health_server(settings.HEALTH_PORT, health)
    try:
        return _run(settings, stop, health)
    finally:
        health.stop_consuming()
        stop_health_server(server)


def _run(settings: EvaluatorSettings, stop: threading.Event, health: HealthState) -> int:
    try:
        health.waiting_for("kafka")
        wait_for_broker(settings.KAFKA_BOOTSTRAP_SERVERS, settings.STARTUP_TIMEOUT_S)
        health.waiting_for("mlflow")
        wait_for_mlflow(settings.MLFLOW_TRACKING_URI, settings.STARTUP_TIMEOUT_S)
        health.waiting_for("topics and bucket")
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
    if stop.is_set():
        log.info("stopped during start-up")
        return 0

    configure_mlflow_client()
    client = connect(settings.MLFLOW_TRACKING_URI)
    producer = EventProducer(settings.KAFKA_BOOTSTRAP_SERVERS, client_id=SERVICE)
    evaluator = Evaluator(settings, store, client, producer)
    health.waiting_for("pending state")
    evaluator.restore()

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
    health.start_consuming(loop)
    try:
        loop.run()
    except RetriesExhausted as exc:
        log.error("giving up after repeated transient errors", extra={"error": str(exc)})
        return 1
    finally:
        producer.close()
    log.info("evaluator stopped")
    return 0
