"""The Kafka layer: topic creation, a flushing producer and a commit-after-side-effect loop.

Error policy (one function, `ConsumerLoop._handle`):
- undecodable JSON, a schema violation or `PoisonMessage` -> `DLQ-<topic>`, then commit;
- a transient error (`TransientError`, connection trouble) -> retried with bounded exponential
  backoff on the same message; when retries run out the loop raises `RetriesExhausted`
  without committing, so the orchestrator restarts the process and the message is redelivered;
- `ShutdownRequested` (raised by a handler that noticed SIGTERM) -> nothing is committed;
- any other exception is a bug for that message -> DLQ with the exception, then commit, so one
  bad message cannot block a partition forever.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import botocore.exceptions
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

# confluent_kafka.admin (NewTopic's documented import path) re-exports it without `as` or __all__,
# so a strict checker does not count it as exported.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from pydantic import BaseModel, ValidationError

from shared.events import SCHEMA_VERSION, DeadLetter, dlq_topic, to_json_bytes
from shared.retry import Backoff, RetryStopped

if TYPE_CHECKING:
    from shared.settings.base import BaseServiceSettings

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 1_000_000
DLQ_PAYLOAD_LIMIT = 64 * 1024
# The one partition count of the pipeline topics, wherever they are created: here (the embedded
# stack, the services' own ensure_topics), the Kafka pod's `topics` container and the broker's
# num.partitions in .kubernetes/base/kafka.yaml (tests/k8s checks all three). In Kubernetes only that
# container creates them: clients reach the broker once its pod is ready, i.e. once they exist.
DEFAULT_PARTITIONS = 4


class PoisonMessage(Exception):
    """The message can never be processed; it belongs in the DLQ."""


class TransientError(Exception):
    """Infrastructure trouble that may pass; the same message is tried again."""


class ShutdownRequested(Exception):
    """A handler noticed the stop flag mid-work; the message must not be committed."""


class RetriesExhausted(RuntimeError):
    """A transient error outlived the retry budget; the process should exit non-zero."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    ConnectionError,
    TimeoutError,
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    KafkaException,
)


_CLIENT_LOG = logging.getLogger("librdkafka")


def _on_client_error(error: KafkaError) -> None:
    # Without an error_cb librdkafka writes these (broker down, all brokers down) to stderr
    # as plain text; here they become JSON log lines like everything else.
    _CLIENT_LOG.warning("kafka client error", extra={"error": str(error), "code": error.name()})


def client_config(bootstrap: str, client_id: str) -> dict[str, Any]:
    """What every client (consumer, producer, admin) of this project is configured with."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "logger": _CLIENT_LOG,
        "error_cb": _on_client_error,
    }


def make_consumer(
    bootstrap: str,
    *,
    group_id: str,
    client_id: str,
    auto_offset_reset: str = "earliest",
    session_timeout_ms: int = 10000,
    max_poll_interval_ms: int = 900000,
    fetch_wait_max_ms: int = 100,
) -> Consumer:
    """A consumer that never commits by itself: every caller commits (or not) after its work."""
    return Consumer(
        {
            **client_config(bootstrap, client_id),
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": auto_offset_reset,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(500, session_timeout_ms // 5),
            "max.poll.interval.ms": max_poll_interval_ms,
            "fetch.wait.max.ms": fetch_wait_max_ms,
            "topic.metadata.refresh.interval.ms": 5000,
            "fetch.message.max.bytes": MAX_PAYLOAD_BYTES * 2,
        }
    )


def ensure_topics(
    bootstrap: str,
    topics: Iterable[str],
    partitions: int = DEFAULT_PARTITIONS,
    timeout_s: float = 15.0,
) -> None:
    """Create `topics` if missing. Creating up front matters: a consumer subscribed before its
    topic exists may not see it for minutes on this broker."""
    admin = AdminClient(client_config(bootstrap, "flts-admin"))
    wanted = sorted(set(topics))
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in wanted],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise TransientError(f"cannot create topic {topic}: {exc}") from exc


def wait_for_broker(bootstrap: str, timeout_s: float) -> None:
    """Return once the broker answers a metadata request; raise TransientError after timeout_s."""
    admin = AdminClient(client_config(bootstrap, "flts-admin"))
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            last = exc
            time.sleep(0.5)
    raise TransientError(f"Kafka at {bootstrap} did not answer within {timeout_s:.0f}s: {last}")


class EventProducer:
    """A producer whose `publish` returns only once the broker acknowledged the message.

    Idempotence stays off: after the in-memory broker restarts, it no longer knows the producer
    id an idempotent producer was given, and such a producer never recovers (every send fails
    with an unknown producer id) until the process restarts.
    """

    def __init__(self, bootstrap: str, client_id: str) -> None:
        self._producer = Producer(
            {
                **client_config(bootstrap, client_id),
                "acks": "all",
                "enable.idempotence": False,
                "linger.ms": 2,
                "message.timeout.ms": 30000,
                "message.max.bytes": MAX_PAYLOAD_BYTES + 100_000,
            }
        )

    def publish(self, topic: str, key: str | None, value: BaseModel | bytes, timeout_s: float = 30.0) -> None:
        payload = value if isinstance(value, bytes) else to_json_bytes(value)
        outcome: dict[str, Any] = {}

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            outcome["error"] = err
            outcome["done"] = True

        self._producer.produce(
            topic,
            value=payload,
            key=key.encode("utf-8") if key is not None else None,
            on_delivery=on_delivery,
        )
        remaining = self._producer.flush(timeout_s)
        if remaining or not outcome.get("done"):
            raise TransientError(f"message to {topic} not acknowledged within {timeout_s}s")
        if outcome["error"] is not None:
            raise TransientError(f"delivery to {topic} failed: {outcome['error']}")

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)


@dataclass(frozen=True)
class MessageContext:
    topic: str
    partition: int
    offset: int
    key: str | None

    @classmethod
    def of(cls, msg: Message) -> MessageContext:
        """Where a consumed message came from. A message that poll() returned without an error
        always has a topic, partition and offset; anything else is refused."""
        topic, partition, offset, key = msg.topic(), msg.partition(), msg.offset(), msg.key()
        if topic is None or partition is None or offset is None:
            raise ValueError(f"not a consumed message: topic={topic} partition={partition} offset={offset}")
        return cls(topic, partition, offset, key.decode("utf-8", "replace") if key else None)

    def log_extra(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


Handler = Callable[[BaseModel, MessageContext], None]


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`; the loop finishes the message in hand, then exits."""

    def _set(signum: int, _frame: object) -> None:
        log.info("stop signal received", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, _set)
    signal.signal(signal.SIGINT, _set)


def decode(raw: bytes | None, model: type[BaseModel]) -> BaseModel:
    """Parse a message body into `model`; raise PoisonMessage naming what is wrong."""
    if raw is None:
        raise PoisonMessage("empty message body")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PoisonMessage(f"payload of {len(raw)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonMessage(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PoisonMessage(f"body must be a JSON object, got {type(data).__name__}")
    # A message from a newer producer is named as such rather than as a generic schema error,
    # so the DLQ tells an operator to upgrade consumers instead of hunting for a bad field.
    if "v" in model.model_fields and "v" in data and data["v"] != SCHEMA_VERSION:
        raise PoisonMessage(
            f"unsupported schema version v={data['v']!r}; this consumer reads v={SCHEMA_VERSION}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in exc.errors()
        )
        raise PoisonMessage(f"schema violation for {model.__name__}: {details}") from exc


def send_to_dlq(producer: EventProducer, msg: Message, error: str, service: str) -> None:
    """Publish `msg` with the reason to `DLQ-<topic>`, keyed like the original."""
    raw = msg.value() or b""
    payload = raw[:DLQ_PAYLOAD_LIMIT].decode("utf-8", "replace")
    if len(raw) > DLQ_PAYLOAD_LIMIT:
        payload += f"...[truncated, {len(raw)} bytes in all]"
    origin = MessageContext.of(msg)
    letter = DeadLetter(
        error=error,
        payload=payload,
        topic=origin.topic,
        partition=origin.partition,
        offset=origin.offset,
        service=service,
    )
    log.warning("message sent to DLQ", extra={**origin.log_extra(), "error": error})
    producer.publish(dlq_topic(origin.topic), origin.key, letter)


@dataclass(frozen=True)
class PartitionLag:
    """Messages on one partition that a consumer group has not committed yet."""

    group: str
    topic: str
    partition: int
    messages: int


class ConsumerLoop:
    """Consume `topics` in `group_id`, hand each decoded event to `handler`, commit after it."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        topics: Mapping[str, type[BaseModel]],
        handler: Handler,
        service: str,
        producer: EventProducer,
        stop: threading.Event,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        fetch_wait_max_ms: int = 100,
        session_timeout_ms: int = 10000,
        max_poll_interval_ms: int = 900000,
        auto_offset_reset: str = "earliest",
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.topics = dict(topics)
        self.handler = handler
        self.service = service
        self.producer = producer
        self.stop = stop
        self.max_retries = max_retries
        self.backoff = Backoff(backoff_s, max_backoff_s)
        self.on_idle = on_idle
        self.group_id = group_id
        self._consumer = make_consumer(
            bootstrap,
            group_id=group_id,
            client_id=f"{service}-{group_id}",
            auto_offset_reset=auto_offset_reset,
            session_timeout_ms=session_timeout_ms,
            max_poll_interval_ms=max_poll_interval_ms,
            fetch_wait_max_ms=fetch_wait_max_ms,
        )
        self._closed = False
        # The lag is read by a client of its own that never joins the group: a call into the
        # polling consumer from another thread can deadlock (it may wait for an operation that
        # only the poll serves, while holding the GIL the poll needs). Made on the first lag query,
        # so a service nobody scrapes never opens it; the lock keeps one query at a time and none
        # once the loop is closed.
        self._bootstrap = bootstrap
        self._lag_client: Consumer | None = None
        self._lag_lock = threading.Lock()
        self._last_error = ""

    @classmethod
    def from_settings(
        cls,
        settings: BaseServiceSettings,
        *,
        group_id: str,
        topics: Mapping[str, type[BaseModel]],
        handler: Handler,
        service: str,
        producer: EventProducer,
        stop: threading.Event,
        on_idle: Callable[[], None] | None = None,
    ) -> ConsumerLoop:
        """A loop with the Kafka and retry behaviour the service's settings ask for."""
        return cls(
            bootstrap=settings.KAFKA_BOOTSTRAP_SERVERS,
            group_id=group_id,
            topics=topics,
            handler=handler,
            service=service,
            producer=producer,
            stop=stop,
            max_retries=settings.HANDLER_MAX_RETRIES,
            backoff_s=settings.HANDLER_RETRY_BACKOFF_S,
            fetch_wait_max_ms=settings.KAFKA_FETCH_WAIT_MAX_MS,
            session_timeout_ms=settings.KAFKA_SESSION_TIMEOUT_MS,
            max_poll_interval_ms=settings.KAFKA_MAX_POLL_INTERVAL_MS,
            on_idle=on_idle,
        )

    def run(self) -> None:
        """Consume until the stop flag is set; then commit nothing more and leave the group."""
        self._consumer.subscribe(list(self.topics))
        log.info("consuming", extra={"topics": list(self.topics), "group": self.group_id})
        try:
            while not self.stop.is_set():
                msg = self._consumer.poll(0.5)
                if msg is None:
                    if self.on_idle is not None:
                        self.on_idle()
                    continue
                error = msg.error()
                if error is not None:
                    self._log_client_error(error)
                    continue
                if not self.process(msg):
                    break
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()
            log.info("consumer closed", extra={"group": self.group_id})
        with self._lag_lock:
            if self._lag_client is not None:
                self._lag_client.close()
                self._lag_client = None

    def lag(self, timeout_s: float = 2.0) -> list[PartitionLag]:
        """The group's lag on every partition of its topics, asked of the broker: the high
        watermark minus the group's committed offset (minus the low watermark where it has
        committed nothing: it then starts at the earliest message). Group-wide, so every replica
        reports the same figures. Safe from any thread, also while a handler runs for minutes.
        Raises KafkaException when the broker does not answer within `timeout_s` overall."""
        deadline = time.monotonic() + timeout_s

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "consumer lag query timed out"))
            return left

        with self._lag_lock:
            if self._closed:
                return []
            if self._lag_client is None:
                client_id = f"{self.service}-lag"
                self._lag_client = Consumer(
                    {**client_config(self._bootstrap, client_id), "group.id": self.group_id}
                )
            client = self._lag_client
            partitions = []
            for topic in self.topics:
                found = client.list_topics(topic, timeout=remaining()).topics.get(topic)
                if found is not None and found.error is None:
                    partitions += [TopicPartition(topic, number) for number in sorted(found.partitions)]
            if not partitions:
                return []
            lags = []
            for position in client.committed(partitions, timeout=remaining()):
                watermarks = client.get_watermark_offsets(position, timeout=remaining(), cached=False)
                if watermarks is None:
                    raise KafkaException(
                        KafkaError(KafkaError._TIMED_OUT, "no watermarks within the timeout")
                    )
                low, high = watermarks
                start = position.offset if position.offset >= 0 else low
                lags.append(
                    PartitionLag(self.group_id, position.topic, position.partition, max(high - start, 0))
                )
        return sorted(lags, key=lambda lag: (lag.topic, lag.partition))

    def process(self, msg: Message) -> bool:
        """Handle one message. Returns False when the loop must stop without committing."""
        ctx = MessageContext.of(msg)
        try:
            event = decode(msg.value(), self.topics[ctx.topic])
        except PoisonMessage as exc:
            self._dead_letter(msg, ctx, str(exc))
            self._commit(msg, ctx)
            return True
        outcome = self._handle(event, ctx)
        if outcome == "stop":
            return False
        if outcome == "dead":
            self._dead_letter_after_handler(msg, ctx)
        self._commit(msg, ctx)
        return True

    def _handle(self, event: BaseModel, ctx: MessageContext) -> str:
        attempt = 0
        while True:
            try:
                self.handler(event, ctx)
                return "done"
            except ShutdownRequested:
                log.info("handler interrupted by shutdown; not committing", extra=ctx.log_extra())
                return "stop"
            except PoisonMessage as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                return "dead"
            except TRANSIENT_ERRORS as exc:
                attempt += 1
                if attempt > self.max_retries:
                    log.error(
                        "transient error outlived retries; exiting without commit",
                        extra={**ctx.log_extra(), "error": str(exc), "attempts": attempt},
                    )
                    raise RetriesExhausted(str(exc)) from exc
                log.warning(
                    "transient error; retrying",
                    extra={
                        **ctx.log_extra(),
                        "error": str(exc),
                        "attempt": attempt,
                        "delay": self.backoff.delay(attempt),
                    },
                )
                try:
                    self.backoff.wait(attempt, self.stop)
                except RetryStopped:
                    return "stop"
            except Exception as exc:
                log.exception("handler failed on this message", extra=ctx.log_extra())
                self._last_error = f"{type(exc).__name__}: {exc}"
                return "dead"

    def _dead_letter_after_handler(self, msg: Message, ctx: MessageContext) -> None:
        self._dead_letter(msg, ctx, self._last_error)

    def _dead_letter(self, msg: Message, ctx: MessageContext, error: str) -> None:
        send_to_dlq(self.producer, msg, error, self.service)

    def _commit(self, msg: Message, ctx: MessageContext) -> None:
        try:
            self._consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            # The message will be redelivered; handlers are idempotent by design.
            log.warning("commit failed", extra={**ctx.log_extra(), "error": str(exc)})

    def _log_client_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise KafkaException(error)
        log.warning("kafka client error", extra={"error": str(error)})
