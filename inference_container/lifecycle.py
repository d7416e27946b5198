"""Which model this replica serves, and how it follows promotions.

Three background threads, none on the request path:
- the pointer poller reads every followed station's live pointer (`<identifier>/current.json`)
  from the promotion bucket at start (and every POINTER_POLL_S, and again as soon as the Kafka
  consumer is assigned, which closes the gap between reading S3 and joining the topic at the
  `latest` offset); with IDENTIFIERS unset it discovers the stations by listing the bucket;
- the consumer reads `model-selected` in a group of its own, so every replica sees every
  promotion of every station;
- the loader downloads and builds each station's newest wanted model, restacks the models of
  its kind (shared.model_runtime.stacking: one batched pass answers windows of every station in a
  stack), then swaps it in by replacing the immutable `Fleet` (station -> model, station -> slot
  in a stack). Requests hold the `Fleet` they started with, so in-flight work finishes on the old
  model and old stack, and a swap of one station leaves every other station's model object
  untouched (its slot may move to a rebuilt stack holding the same parameters: its answers do
  not change). A failed load keeps that station's old model and retries with backoff (per
  station) until it succeeds or is superseded.

Every station is loaded eagerly, as soon as its pointer is seen: measured figures and the
reasoning are in inference_container/README.md ("Many stations").

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from botocore.exceptions import ClientError
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
from shared.model_runtime.forecasting import Forecast, Window
from shared.model_runtime.pyfunc import load_window_model
from shared.model_runtime.ranges import KpiRanges
from shared.model_runtime.stacking import Slot, stack_slots
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


@dataclass(frozen=True)
class Fleet:
    """What a request reads, in one attribute read: every loaded station's model and the slot
    (stack and index) its windows are evaluated in. Never changed; a swap replaces it whole."""

    models: Mapping[str, ServingModel]
    slots: Mapping[str, Slot]

    def with_model(self, model: ServingModel, *, across_stations: bool) -> Fleet:
        """This fleet with `model` serving its station, the stacks of its kind rebuilt."""
        models = {**self.models, model.pointer.identifier: model}
        forecasts = {identifier: served.forecast for identifier, served in models.items()}
        slots = stack_slots(forecasts, self.slots, across_stations=across_stations)
        return Fleet(MappingProxyType(models), MappingProxyType(slots))


EMPTY_FLEET = Fleet(MappingProxyType({}), MappingProxyType({}))


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
    out = forecast.predict_many([_warm_up_window(input_len, step)])[0]
    if out.shape != (2, len(KPI_COLUMNS)):
        raise ValueError(f"model answered shape {out.shape} on the warm-up window")


def _warm_up_slot(slot: Slot, input_len: int, step: np.timedelta64) -> None:
    """The warm-up prediction through the stack the model will be served from."""
    out = slot.stack.predict_many([slot.member], [_warm_up_window(input_len, step)])[0]
    if out.shape != (2, len(KPI_COLUMNS)):
        raise ValueError(f"model answered shape {out.shape} from its stack on the warm-up window")


def _warm_up_window(input_len: int, step: np.timedelta64) -> Window:
    start = np.datetime64("2020-01-01T00:00:00", "us")
    timestamps = start + np.arange(input_len) * np.timedelta64(step, "us")
    return timestamps, np.zeros((input_len, len(KPI_COLUMNS))), 2


@dataclass(frozen=True)
class LoadFailure:
    """The last failed load of a station's newest champion (the previous model keeps serving)."""

    run_id: str
    error: str
    at: datetime

    def describe(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "error": self.error, "at": self.at.isoformat()}


class ModelManager:
    """Holds one live `ServingModel` per station and keeps each in step with its promotions.

    Every station swaps on its own: `fleet` is immutable and replaced whole (one reference
    assignment) when any station's new model is ready, so a request reads it once and resolves
    its station's model and slot from that snapshot; another station's swap cannot touch it.
    """

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
        self._configured = frozenset(settings.IDENTIFIERS) if settings.IDENTIFIERS else None
        self._fleet = EMPTY_FLEET
        # Guarded by _changed: the newest pointer per station, and per-station retry state.
        self._wanted: dict[str, PromotionPointer] = {}
        self._failed_attempts: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, LoadFailure] = {}
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
    def fleet(self) -> Fleet:
        """Every loaded station's model and slot; never changes (swaps replace it)."""
        return self._fleet

    @property
    def models(self) -> Mapping[str, ServingModel]:
        """Every loaded station's model; the mapping itself never changes (swaps replace it)."""
        return self._fleet.models

    def knows(self, identifier: str) -> bool:
        """A station this replica serves or will serve: configured, or with a champion pointer."""
        if self._configured is not None:
            return identifier in self._configured
        return identifier in self._wanted or identifier in self._fleet.models

    def follows(self, identifier: str) -> bool:
        return self._configured is None or identifier in self._configured

    @property
    def failures(self) -> dict[str, LoadFailure]:
        with self._changed:
            return dict(self._failures)

    @property
    def last_error(self) -> str | None:
        """The most recent load error of any station still failing (None once all recovered)."""
        failures = self.failures
        if not failures:
            return None
        return max(failures.values(), key=lambda failure: failure.at).error

    def missing(self) -> list[str]:
        """Stations with a champion pointer but no model loaded yet (sorted)."""
        models = self.models
        with self._changed:
            return sorted(identifier for identifier in self._wanted if identifier not in models)

    def ready(self) -> bool:
        """Every station with a champion is loaded, and there is at least one."""
        return bool(self.models) and not self.missing()

    def pending(self) -> dict[str, str]:
        """Stations whose newest champion is not the one served yet: identifier -> its run_id."""
        models = self.models
        with self._changed:
            wanted = dict(self._wanted)
        return {
            identifier: pointer.run_id
            for identifier, pointer in sorted(wanted.items())
            if identifier not in models or models[identifier].pointer is not pointer
        }

    def status(self) -> dict[str, Any]:
        return {
            "model_ready": self.ready(),
            "models_loaded": len(self.models),
            "consumer_assigned": self.consumer_assigned.is_set(),
            "pointer_checked": self.pointer_checked.is_set(),
            "swaps": self.swaps,
            "pending": self.pending(),
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
        """Want `pointer` if its station is followed and it is newer than that station's wanted
        pointer; True when accepted."""
        identifier = pointer.identifier
        if not self.follows(identifier):
            log.debug("promotion for a station not served here ignored", extra={"identifier": identifier})
            return False
        with self._changed:
            wanted = self._wanted.get(identifier)
            if wanted is not None and pointer.timestamp <= wanted.timestamp:
                return False
            self._wanted[identifier] = pointer
            # A newer champion cancels the previous one's failure and its backoff.
            self._failed_attempts.pop(identifier, None)
            self._retry_at.pop(identifier, None)
            self._failures.pop(identifier, None)
            self._changed.notify_all()
        log.info(
            "promotion accepted",
            extra={
                "identifier": identifier,
                "run_id": pointer.run_id,
                "model_type": pointer.model_type.value,
                "source": source,
            },
        )
        return True

    # -- loader ----------------------------------------------------------------------------------
    def _load_from_mlflow(self, pointer: PromotionPointer) -> ServingModel:
        client = MlflowClient(tracking_uri=self.settings.MLFLOW_TRACKING_URI)
        return load_serving_model(client, pointer, cache_dir=self.settings.MODEL_CACHE_DIR)

    def _load_loop(self) -> None:
        """One loader for every station, one load at a time: loads are CPU-bound (building the
        model, the warm-up prediction) and would only compete with requests if run in parallel."""
        while not self._stop.is_set():
            with self._changed:
                pointer = self._next_load()
                while not self._stop.is_set() and pointer is None:
                    self._changed.wait(self._idle_wait())
                    pointer = self._next_load()
                if self._stop.is_set() or pointer is None:
                    return
            try:
                model = self._loader(pointer)
                # Only this thread replaces the fleet, so the one built here is current at the swap.
                fleet = self._fleet.with_model(model, across_stations=self.settings.BATCH_ACROSS_STATIONS)
                _warm_up_slot(fleet.slots[pointer.identifier], model.input_seq_len, model.step)
            except Exception as exc:  # any failure keeps the station's old model; retried later
                self._on_load_failure(pointer, exc)
                continue
            with self._changed:
                if self._wanted.get(pointer.identifier) is not pointer:
                    continue  # superseded while loading; the newer one is loaded next
                self._swap(fleet, pointer.identifier)

    def _next_load(self) -> PromotionPointer | None:
        """The station to load now (caller holds the lock): one whose newest champion is not
        served and whose backoff has run out, the longest-waiting first."""
        now = time.monotonic()
        models = self.models
        due = [
            (self._retry_at.get(identifier, 0.0), identifier)
            for identifier, pointer in self._wanted.items()
            if (identifier not in models or models[identifier].pointer is not pointer)
            and self._retry_at.get(identifier, 0.0) <= now
        ]
        return self._wanted[min(due)[1]] if due else None

    def _idle_wait(self) -> float:
        """Until the next station's backoff runs out (offer and stop notify sooner)."""
        if not self._retry_at:
            return 1.0
        return max(0.01, min(1.0, min(self._retry_at.values()) - time.monotonic()))

    def _swap(self, fleet: Fleet, identifier: str) -> None:
        """Serve `fleet`, the current one with `identifier`'s new model (caller holds the lock):
        requests see the old fleet or the new one, and every other station's model is the same
        object in both."""
        model = fleet.models[identifier]
        old = self._fleet.models.get(identifier)
        self._fleet = fleet
        self.swaps += 1
        self._failures.pop(identifier, None)
        self._failed_attempts.pop(identifier, None)
        self._retry_at.pop(identifier, None)
        if self.metrics is not None:
            label = self.metrics.identifiers.admit(identifier)
            self.metrics.swaps.labels(label).inc()
            self.metrics.model_ready.set(1)
            self.metrics.models_loaded.set(len(fleet.models))
            if old is not None:
                self.metrics.model_info.remove(*self._info_labels(old, label))
            self.metrics.model_info.labels(*self._info_labels(model, label)).set(1)
        log.info(
            "model swapped in",
            extra={
                "identifier": identifier,
                "run_id": model.pointer.run_id,
                "model_type": model.pointer.model_type.value,
                "previous_run_id": old.pointer.run_id if old else None,
                "stations_loaded": len(fleet.models),
            },
        )

    @staticmethod
    def _info_labels(model: ServingModel, identifier_label: str) -> tuple[str, str, str, str]:
        p = model.pointer
        return (identifier_label, p.run_id, p.model_type.value, p.config_hash)

    def _on_load_failure(self, pointer: PromotionPointer, exc: Exception) -> None:
        identifier = pointer.identifier
        error = f"{type(exc).__name__}: {exc}"[:500]
        if self.metrics is not None:
            # A promoted station (from the broker, not a client) is admitted to the label bound.
            self.metrics.load_failures.labels(self.metrics.identifiers.admit(identifier)).inc()
        with self._changed:
            if self._wanted.get(identifier) is not pointer:
                return  # superseded while loading: the newer champion has a clean slate
            attempts = self._failed_attempts.get(identifier, 0) + 1
            self._failed_attempts[identifier] = attempts
            delay = self.backoff.delay(attempts)
            self._retry_at[identifier] = time.monotonic() + delay
            self._failures[identifier] = LoadFailure(pointer.run_id, error, datetime.now(UTC))
        log.warning(
            "model load failed; the station keeps its current model and the load is retried",
            extra={"identifier": identifier, "run_id": pointer.run_id, "error": error, "retry_in_s": delay},
        )

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
        """Offer every followed station's live pointer: the configured ones, or, with IDENTIFIERS
        unset, every `<identifier>/current.json` in the bucket."""
        bucket = self.settings.BUCKET_PROMOTION
        stations = sorted(self._configured) if self._configured is not None else _stations(store, bucket)
        for identifier in stations:
            key = current_key(identifier)
            try:
                raw = store.get_bytes(bucket, key)
            except ObjectNotFound:
                log.debug("no live pointer yet", extra={"bucket": bucket, "key": key})
                continue
            try:
                pointer = decode_pointer(raw)
            except PoisonMessage as exc:
                log.error("live pointer is unreadable", extra={"key": key, "error": str(exc)})
                continue
            if pointer.identifier != identifier:
                log.error(
                    "live pointer names another station; ignored",
                    extra={"key": key, "identifier": pointer.identifier},
                )
                continue
            self.offer(pointer, "s3")
        self.pointer_checked.set()

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


def _stations(store: ObjectStore, bucket: str) -> list[str]:
    """Every top-level folder of the promotion bucket (one per station): listed by delimiter,
    so the promotion history under each folder, which only grows, is never enumerated."""
    stations: list[str] = []
    paginator = store.client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Delimiter="/"):
            stations.extend(entry["Prefix"].rstrip("/") for entry in page.get("CommonPrefixes", []))
    except ClientError as exc:
        # No bucket yet means nothing was ever promoted, as a missing pointer does.
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise
    return stations
