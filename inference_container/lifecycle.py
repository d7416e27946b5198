"""Which model this replica serves, and how it follows promotions.

Three background threads, none on the request path:
- the pointer poller reads the live pointer from the promotion bucket at start (and every
  POINTER_POLL_S, and again as soon as the Kafka consumer is assigned, which closes the gap
  between reading S3 and joining the topic at the `latest` offset);
- the consumer reads `model-selected` in a group of its own, so every replica sees every
  promotion;
- the loader downloads and builds the newest wanted model, then swaps one reference. Requests
  hold the `ServingModel` they started with, so in-flight work finishes on the old model. A
  failed load keeps the old model and retries with backoff until it succeeds or is superseded.

All three wait between failures by the project's one retry policy (shared.retry.Backoff): from
MODEL_RELOAD_BACKOFF_S, doubling per failure, never above MODEL_RELOAD_MAX_BACKOFF_S.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from mlflow.tracking import MlflowClient

from inference_container.settings import InferenceSettings
from inference_container.telemetry import ServiceMetrics
from shared.data import KPI_COLUMNS
from shared.events import PromotionPointer
from shared.kafka import (
    EventProducer,
    PoisonMessage,
    TransientError,
    decode,
    ensure_topics,
    make_consumer,
    send_to_dlq,
)
from shared.model_runtime.forecasting import Forecast
from shared.model_runtime.pyfunc import load_window_model
from shared.model_runtime.ranges import KpiRanges
from shared.promotion import current_key
from shared.retry import Backoff, RetryStopped
from shared.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingModel:
    """Everything one request needs, immutable: swapping replaces the whole object."""

    pointer: PromotionPointer
    forecast: Forecast
    input_seq_len: int
    output_seq_len: int
    step: np.timedelta64
    loaded_at: datetime
    # Plausible input ranges of the model's own training data (requests outside them get 422).
    ranges: KpiRanges
    meta: dict[str, Any] = field(repr=False)

    @property
    def step_seconds(self) -> float:
        return float(self.step / np.timedelta64(1, "s"))

    def describe(self) -> dict[str, Any]:
        return {
            "identifier": self.pointer.identifier,
            "run_id": self.pointer.run_id,
            "model_type": self.pointer.model_type.value,
            "config_hash": self.pointer.config_hash,
            "model_uri": self.pointer.model_uri,
            "experiment": self.pointer.experiment,
            "promoted_at": self.pointer.timestamp.isoformat(),
            "loaded_at": self.loaded_at.isoformat(),
            "input_seq_len": self.input_seq_len,
            "output_seq_len": self.output_seq_len,
            "step_seconds": self.step_seconds,
            "metrics": {"rmse": self.pointer.rmse, "mae": self.pointer.mae, "mse": self.pointer.mse},
            "score": self.pointer.score,
        }


def decode_pointer(raw: bytes | None) -> PromotionPointer:
    """A promotion pointer from its JSON (S3 object or Kafka message); PoisonMessage says what is
    wrong."""
    pointer = decode(raw, PromotionPointer)
    assert isinstance(pointer, PromotionPointer)
    return pointer


def artifact_path(pointer: PromotionPointer) -> str:
    """The model folder inside the run: from `runs:/<id>/<path>`, else the type's name."""
    prefix = f"runs:/{pointer.run_id}/"
    if pointer.model_uri.startswith(prefix) and len(pointer.model_uri) > len(prefix):
        return pointer.model_uri[len(prefix) :].strip("/")
    return pointer.model_type.value


def load_serving_model(
    client: MlflowClient,
    pointer: PromotionPointer,
    *,
    cache_dir: str | None = None,
) -> ServingModel:
    """Download the pointer's MLflow model once and build it from the files inside it (weights or
    Prophet JSON, scaler, preprocess config): the artifact `models:/...@champion` loads as well."""
    workdir = Path(tempfile.mkdtemp(prefix="flts-model-", dir=cache_dir))
    try:
        model_dir = Path(client.download_artifacts(pointer.run_id, artifact_path(pointer), str(workdir)))
        # Read directly rather than through mlflow.pyfunc: the request path calls the runtime's
        # Forecast (batched predict_many), which the pyfunc wrapper would hide.
        loaded = load_window_model(model_dir)
        _warm_up(loaded.forecast, loaded.input_seq_len, loaded.step)
        return ServingModel(
            pointer=pointer,
            forecast=loaded.forecast,
            input_seq_len=loaded.input_seq_len,
            output_seq_len=loaded.output_seq_len,
            step=loaded.step,
            loaded_at=datetime.now(UTC),
            ranges=loaded.ranges,
            meta=loaded.meta,
        )
    finally:
        # Everything is in memory now; the files are not needed again.
        shutil.rmtree(workdir, ignore_errors=True)


def _warm_up(forecast: Forecast, input_len: int, step: np.timedelta64) -> None:
    """One prediction before serving: the first torch call is slow, and a broken model fails here,
    before the swap, instead of on a user's request."""
    start = np.datetime64("2020-01-01T00:00:00", "us")
    timestamps = start + np.arange(input_len) * np.timedelta64(step, "us")
    kpis = np.zeros((input_len, len(KPI_COLUMNS)))
    out = forecast.predict(timestamps, kpis, 2)
    if out.shape != (2, len(KPI_COLUMNS)):
        raise ValueError(f"model answered shape {out.shape} on the warm-up window")


class ModelManager:
    """Holds the live `ServingModel` and keeps it in step with promotions."""

    def __init__(
        self,
        settings: InferenceSettings,
        metrics: ServiceMetrics | None = None,
        loader: Callable[[PromotionPointer], ServingModel] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.backoff = Backoff(settings.MODEL_RELOAD_BACKOFF_S, settings.MODEL_RELOAD_MAX_BACKOFF_S)
        self._loader = loader or self._load_from_mlflow
        self._current: ServingModel | None = None
        self._wanted: PromotionPointer | None = None
        self._failed_attempts = 0
        self.last_error: str | None = None
        self.pointer_error: str | None = None
        self.swaps = 0
        self.consumer_assigned = threading.Event()
        self.pointer_checked = threading.Event()
        self._changed = threading.Condition()
        self._poll_now = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.group_id = f"inference-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._dead_letters: EventProducer | None = None

    # -- read side (request path): one attribute read, no lock -------------------------------
    @property
    def current(self) -> ServingModel | None:
        return self._current

    def status(self) -> dict[str, Any]:
        wanted = self._wanted
        current = self._current
        pending = wanted is not None and (current is None or wanted is not current.pointer)
        return {
            "model_ready": current is not None,
            "consumer_assigned": self.consumer_assigned.is_set(),
            "pointer_checked": self.pointer_checked.is_set(),
            "swaps": self.swaps,
            "pending_run_id": wanted.run_id if pending and wanted is not None else None,
            "last_error": self.last_error,
            "pointer_error": self.pointer_error,
        }

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        for name, target in (
            ("model-loader", self._load_loop),
            ("pointer-poller", self._poll_loop),
            ("promotion-consumer", self._consume_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Signal the threads and give them `timeout_s` in all; they are daemons, so one stuck
        in a network call (a dead broker) cannot hold the process."""
        self._stop.set()
        self._poll_now.set()
        with self._changed:
            self._changed.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def offer(self, pointer: PromotionPointer, source: str) -> bool:
        """Want `pointer` if it is for us and newer than what we want; True when accepted."""
        wanted_identifier = self.settings.IDENTIFIER
        if wanted_identifier is not None and pointer.identifier != wanted_identifier:
            log.debug("promotion for another identifier ignored", extra={"identifier": pointer.identifier})
            return False
        with self._changed:
            wanted = self._wanted
            if wanted is not None and pointer.timestamp <= wanted.timestamp:
                return False
            self._wanted = pointer
            self._failed_attempts = 0
            self._changed.notify_all()
        log.info(
            "promotion accepted",
            extra={"run_id": pointer.run_id, "model_type": pointer.model_type.value, "source": source},
        )
        return True

    # -- loader ----------------------------------------------------------------------------------
    def _load_from_mlflow(self, pointer: PromotionPointer) -> ServingModel:
        client = MlflowClient(tracking_uri=self.settings.MLFLOW_TRACKING_URI)
        return load_serving_model(client, pointer, cache_dir=self.settings.MODEL_CACHE_DIR)

    def _load_loop(self) -> None:
        while not self._stop.is_set():
            with self._changed:
                while not self._stop.is_set() and not self._needs_load():
                    self._changed.wait(1.0)
                if self._stop.is_set():
                    return
                pointer = self._wanted
            assert pointer is not None
            try:
                model = self._loader(pointer)
            except Exception as exc:  # any failure keeps the old model; the loop retries
                self._on_load_failure(pointer, exc)
                continue
            with self._changed:
                if self._wanted is not pointer:
                    # Superseded while loading; load the newer one next.
                    continue
                self._swap(model)

    def _needs_load(self) -> bool:
        wanted = self._wanted
        current = self._current
        return wanted is not None and (current is None or current.pointer is not wanted)

    def _swap(self, model: ServingModel) -> None:
        old = self._current
        self._current = model  # one reference assignment: requests see old or new, never a mix
        self.swaps += 1
        self.last_error = None
        if self.metrics is not None:
            self.metrics.swaps.inc()
            self.metrics.model_ready.set(1)
            if old is not None:
                self.metrics.model_info.remove(*self._info_labels(old))
            self.metrics.model_info.labels(*self._info_labels(model)).set(1)
        log.info(
            "model swapped in",
            extra={
                "run_id": model.pointer.run_id,
                "model_type": model.pointer.model_type.value,
                "previous_run_id": old.pointer.run_id if old else None,
            },
        )

    @staticmethod
    def _info_labels(model: ServingModel) -> tuple[str, str, str, str]:
        p = model.pointer
        return (p.identifier, p.run_id, p.model_type.value, p.config_hash)

    def _on_load_failure(self, pointer: PromotionPointer, exc: Exception) -> None:
        self._failed_attempts += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        if self.metrics is not None:
            self.metrics.load_failures.inc()
        delay = self.backoff.delay(self._failed_attempts)
        log.warning(
            "model load failed; keeping the current model and retrying",
            extra={"run_id": pointer.run_id, "error": self.last_error, "retry_in_s": delay},
        )
        with self._changed:
            # A newer promotion (offer resets the counter and notifies) cuts the wait short.
            self._changed.wait(delay)

    # -- pointer poller --------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        store: ObjectStore | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if store is None:
                    store = ObjectStore.from_settings(self.settings)
                self._read_pointer(store)
                self.pointer_error = None
                failures = 0
                wait = self.settings.POINTER_POLL_S
            except Exception as exc:  # S3 down or a bad object: log, stay alive, retry
                failures += 1
                self.pointer_error = f"{type(exc).__name__}: {exc}"[:500]
                wait = self.backoff.delay(failures)
                log.warning("cannot read the live pointer", extra={"error": str(exc), "retry_in_s": wait})
            self._poll_now.wait(wait)
            self._poll_now.clear()

    def _read_pointer(self, store: ObjectStore) -> None:
        key = current_key(self.settings.IDENTIFIER)
        try:
            raw = store.get_bytes(self.settings.BUCKET_PROMOTION, key)
        except ObjectNotFound:
            self.pointer_checked.set()
            log.debug("no live pointer yet", extra={"bucket": self.settings.BUCKET_PROMOTION, "key": key})
            return
        try:
            pointer = decode_pointer(raw)
        except PoisonMessage as exc:
            self.pointer_checked.set()
            log.error("live pointer is unreadable", extra={"key": key, "error": str(exc)})
            return
        self.pointer_checked.set()
        self.offer(pointer, "s3")

    # -- promotion consumer ----------------------------------------------------------------------
    def _consume_loop(self) -> None:
        """Consume until stopped; a crashed consumer (a fatal client error) is rebuilt after a
        pause, because a replica that stops hearing promotions would silently serve a stale model."""
        failures = 0
        while not self._stop.is_set():
            try:
                self._consume()
                return
            except Exception:
                failures += 1
                self.consumer_assigned.clear()
                log.exception(
                    "promotion consumer failed; rebuilding it",
                    extra={"retry_in_s": self.backoff.delay(failures)},
                )
                try:
                    self.backoff.wait(failures, self._stop)
                except RetryStopped:
                    return

    def _consume(self) -> None:
        settings = self.settings
        topic = settings.TOPIC_MODEL_SELECTED
        try:
            ensure_topics(settings.KAFKA_BOOTSTRAP_SERVERS, [topic], timeout_s=5.0)
        except Exception as exc:  # the broker may be down; the consumer reconnects by itself
            log.warning("cannot ensure the promotion topic", extra={"topic": topic, "error": str(exc)})
        # A group per replica: every replica must see every promotion. "latest": the S3 pointer
        # covers what happened before this replica started.
        consumer = make_consumer(
            settings.KAFKA_BOOTSTRAP_SERVERS,
            group_id=self.group_id,
            client_id=self.group_id,
            auto_offset_reset="latest",
            session_timeout_ms=settings.KAFKA_SESSION_TIMEOUT_MS,
            fetch_wait_max_ms=settings.KAFKA_FETCH_WAIT_MAX_MS,
        )

        def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            self.consumer_assigned.set()
            # Re-read the pointer: a promotion published before the assignment is not delivered.
            self._poll_now.set()
            log.info("promotion consumer assigned", extra={"topic": topic, "partitions": len(partitions)})

        def on_revoke(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
            self.consumer_assigned.clear()

        consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
        try:
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                error = msg.error()
                if error:
                    if error.fatal():
                        raise KafkaException(error)
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("kafka client error", extra={"topic": topic, "error": str(error)})
                    continue
                self._on_message(msg)
        finally:
            consumer.close()

    def _dlq_producer(self) -> EventProducer:
        # Made on first use: a healthy replica never needs a producer.
        if self._dead_letters is None:
            self._dead_letters = EventProducer(self.settings.KAFKA_BOOTSTRAP_SERVERS, client_id=self.group_id)
        return self._dead_letters

    def _on_message(self, msg: Message) -> None:
        extra = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
        try:
            pointer = decode_pointer(msg.value())
        except PoisonMessage as exc:
            # Every replica reads every message, so each files its own letter, named by its group:
            # the DLQ then shows which replicas could not read it.
            log.error("unreadable promotion ignored", extra={**extra, "error": str(exc)})
            try:
                send_to_dlq(self._dlq_producer(), msg, str(exc), f"inference:{self.group_id}")
            except TransientError as dlq_exc:
                log.warning("could not file the dead letter", extra={**extra, "error": str(dlq_exc)})
            return
        self.offer(pointer, "kafka")
