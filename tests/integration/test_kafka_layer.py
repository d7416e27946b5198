"""The Kafka layer against the real broker: commit after handling, retries, DLQ, SIGTERM.

Each test uses its own topic (one partition, so order is total) and its own group. Group joins
on this broker take about half of `session.timeout.ms`, so the loops here use 3 s (a 1.5 s join)
instead of the services' 10 s.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from pydantic import BaseModel

from flts_cli.stack import StackConfig
from shared.events import DataClaim, DeadLetter, dlq_topic
from shared.health import HealthState, start_health_server, stop_health_server
from shared.kafka import (
    ConsumerLoop,
    EventProducer,
    MessageContext,
    PartitionLag,
    PoisonMessage,
    RetriesExhausted,
    TransientError,
)

HELPER = Path(__file__).resolve().parent.parent / "helpers" / "sigterm_consumer.py"
SESSION_TIMEOUT_MS = 3000
LOOP_TIMEOUT_S = 30.0


def claim(identifier: str) -> DataClaim:
    return DataClaim(
        bucket="processed-data",
        object="h/train.parquet",
        test_object="h/test.parquet",
        meta_object="h/meta.json",
        size=10,
        rows=5,
        config_hash="a" * 64,
        identifier=identifier,
        dataset="PobleSec",
    )


class CountingLoop(ConsumerLoop):
    """A ConsumerLoop that records the offsets it commits."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.commits: list[int] = []

    def _commit(self, msg: Message, ctx: MessageContext) -> None:
        super()._commit(msg, ctx)
        self.commits.append(ctx.offset)


def make_loop(
    stack: StackConfig,
    topic: str,
    group: str,
    handler: Callable[[BaseModel, MessageContext], None],
    stop: threading.Event,
    producer: EventProducer,
) -> CountingLoop:
    return CountingLoop(
        bootstrap=stack.kafka_bootstrap,
        group_id=group,
        topics={topic: DataClaim},
        handler=handler,
        service="kafka-layer-test",
        producer=producer,
        stop=stop,
        max_retries=2,
        backoff_s=0.05,
        fetch_wait_max_ms=10,
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )


def run_loop(loop: ConsumerLoop, stop: threading.Event) -> BaseException | None:
    """Run `loop` in a thread until it stops by itself; return what it raised, if anything."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            loop.run()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(LOOP_TIMEOUT_S)
    if thread.is_alive():
        stop.set()
        thread.join(10)
        pytest.fail(f"consumer loop did not finish within {LOOP_TIMEOUT_S}s")
    return raised[0] if raised else None


def committed_offset(stack: StackConfig, group: str, topic: str) -> int:
    """The group's committed offset on partition 0, read without joining the group."""
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": group})
    try:
        (partition,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return partition.offset
    finally:
        consumer.close()


def read_topic(stack: StackConfig, topic: str, count: int, timeout_s: float = 15.0) -> list[Message]:
    """Read the first `count` messages of partition 0 by assignment (no group join)."""
    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": f"reader-{topic}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                messages.append(msg)
    finally:
        consumer.close()
    assert len(messages) == count, f"expected {count} messages on {topic}, read {len(messages)}"
    return messages


def message_body(msg: Message) -> bytes:
    value = msg.value()
    assert value is not None, f"message at offset {msg.offset()} has no body"
    return value


@pytest.fixture
def producer(stack: StackConfig) -> Iterator[EventProducer]:
    producer = EventProducer(stack.kafka_bootstrap, client_id="kafka-layer-test")
    yield producer
    producer.close()


def test_handled_message_is_committed_and_not_redelivered_to_a_later_consumer_of_the_group(
    stack: StackConfig,
    make_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    producer: EventProducer,
) -> None:
    topic, group = make_topic("commit"), unique_name("group")
    producer.publish(topic, "key-1", claim("first"))

    first_seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def handle_first(event: BaseModel, ctx: MessageContext) -> None:
        assert isinstance(event, DataClaim)
        first_seen.append((event.identifier, ctx.offset))
        stop.set()

    loop = make_loop(stack, topic, group, handle_first, stop, producer)
    assert run_loop(loop, stop) is None
    assert first_seen == [("first", 0)]
    assert loop.commits == [0]
    assert committed_offset(stack, group, topic) == 1

    # One partition: were offset 0 uncommitted, the second consumer would get it before "second".
    producer.publish(topic, "key-2", claim("second"))
    second_seen: list[str] = []
    stop2 = threading.Event()

    def handle_second(event: BaseModel, _ctx: MessageContext) -> None:
        assert isinstance(event, DataClaim)
        second_seen.append(event.identifier)
        if event.identifier == "second":
            stop2.set()

    assert run_loop(make_loop(stack, topic, group, handle_second, stop2, producer), stop2) is None
    assert second_seen == ["second"]
    assert committed_offset(stack, group, topic) == 2


def test_transient_error_is_retried_on_the_same_message_and_committed_once_or_never_when_retries_run_out(
    stack: StackConfig,
    make_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    producer: EventProducer,
) -> None:
    topic, group = make_topic("transient"), unique_name("group")
    producer.publish(topic, "k", claim("flaky-once"))
    producer.publish(topic, "k", claim("always-down"))

    attempts: list[tuple[str, str, int]] = []
    stop = threading.Event()

    def handle(event: BaseModel, ctx: MessageContext) -> None:
        assert isinstance(event, DataClaim)
        attempts.append((event.identifier, event.event_id, ctx.offset))
        if event.identifier == "always-down":
            raise TransientError("object store unreachable")
        if len([a for a in attempts if a[0] == "flaky-once"]) == 1:
            raise TransientError("broker hiccup")

    loop = make_loop(stack, topic, group, handle, stop, producer)
    raised = run_loop(loop, stop)

    flaky = [a for a in attempts if a[0] == "flaky-once"]
    down = [a for a in attempts if a[0] == "always-down"]
    assert len(flaky) == 2 and flaky[0] == flaky[1], "the same message (event_id, offset) is retried"
    # max_retries=2: the first try plus two retries, then the loop gives up without committing.
    assert len(down) == 3
    assert isinstance(raised, RetriesExhausted)
    assert loop.commits == [0]
    assert committed_offset(stack, group, topic) == 1


def test_undecodable_invalid_or_unknown_version_messages_go_to_the_dlq_and_the_loop_moves_on(
    stack: StackConfig,
    make_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    producer: EventProducer,
) -> None:
    topic, group = make_topic("poison"), unique_name("group")
    valid = json.loads(claim("x").model_dump_json())
    bodies: list[bytes] = [
        b'{"bucket": "processed-data", "object": ',  # truncated JSON
        json.dumps({**valid, "rows": "many"}).encode(),  # JSON, but fails the schema
        json.dumps({**valid, "v": 2}).encode(),  # a schema version this consumer does not know
        json.dumps({**valid, "identifier": "handler-poison"}).encode(),
        json.dumps({**valid, "identifier": "handler-bug"}).encode(),
        json.dumps({**valid, "identifier": "good"}).encode(),
    ]
    for i, body in enumerate(bodies):
        producer.publish(topic, f"key-{i}", body)

    handled: list[str] = []
    stop = threading.Event()

    def handle(event: BaseModel, _ctx: MessageContext) -> None:
        assert isinstance(event, DataClaim)
        handled.append(event.identifier)
        if event.identifier == "handler-poison":
            raise PoisonMessage("dataset has no rows after repair")
        if event.identifier == "handler-bug":
            raise ValueError("unexpected shape")
        stop.set()

    loop = make_loop(stack, topic, group, handle, stop, producer)
    assert run_loop(loop, stop) is None
    assert handled == ["handler-poison", "handler-bug", "good"]
    assert loop.commits == [0, 1, 2, 3, 4, 5]
    assert committed_offset(stack, group, topic) == 6

    letters = read_topic(stack, dlq_topic(topic), 5)
    decoded = [DeadLetter.model_validate_json(message_body(m)) for m in letters]
    expected_errors = [
        "not valid JSON",
        "rows",
        "unsupported schema version v=2",
        "PoisonMessage: dataset has no rows after repair",
        "ValueError: unexpected shape",
    ]
    for offset, (message, letter, expected) in enumerate(zip(letters, decoded, expected_errors, strict=True)):
        assert expected in letter.error
        assert letter.payload == bodies[offset].decode()
        assert (letter.topic, letter.partition, letter.offset) == (topic, 0, offset)
        assert letter.service == "kafka-layer-test"
        assert message.key() == f"key-{offset}".encode()
    assert "schema violation for DataClaim" in decoded[1].error


def test_sigterm_finishes_the_message_in_hand_commits_it_and_exits_zero(
    stack: StackConfig,
    service_env: dict[str, str],
    make_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    producer: EventProducer,
) -> None:
    topic, group = make_topic("sigterm"), unique_name("group")
    producer.publish(topic, "k", claim("in-hand"))
    producer.publish(topic, "k", claim("left-for-later"))

    env = {**service_env, "KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS)}
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), topic, group, "2.0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout, stderr_pipe = proc.stdout, proc.stderr
    assert stdout is not None and stderr_pipe is not None

    def pump() -> None:
        for line in stdout:
            lines.put(line.strip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert lines.get(timeout=LOOP_TIMEOUT_S) == "started 0"
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        rc = proc.wait(timeout=20)
        exit_s = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    stderr = stderr_pipe.read()
    assert rc == 0, stderr[-2000:]
    assert rest == ["finished 0", "exited cleanly"], "the message in hand finishes; no new one starts"
    assert exit_s < 10
    assert committed_offset(stack, group, topic) == 1
    assert '"msg": "stop signal received"' in stderr


def test_lag_counts_the_messages_a_busy_handler_has_not_committed_and_reaches_zero_after(
    stack: StackConfig,
    make_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    producer: EventProducer,
) -> None:
    topic, group = make_topic("lag"), unique_name("group")
    for n in range(3):
        producer.publish(topic, f"key-{n}", claim(f"claim-{n}"))
    in_handler, release, stop = threading.Event(), threading.Event(), threading.Event()

    def handle(_event: BaseModel, _ctx: MessageContext) -> None:
        in_handler.set()
        release.wait(LOOP_TIMEOUT_S)  # a trainer fitting a model: the loop polls nothing meanwhile

    loop = make_loop(stack, topic, group, handle, stop, producer)
    health = HealthState("kafka-layer-test")
    server = start_health_server(0, health, host="127.0.0.1")
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        assert in_handler.wait(LOOP_TIMEOUT_S), "the first message never reached the handler"
        health.start_consuming(loop)
        # Asked from this thread while the loop's thread is inside the handler.
        assert loop.lag() == [PartitionLag(group, topic, 0, 3)]
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            exposition = response.read().decode()
        sample = f'consumer_lag_messages{{group="{group}",partition="0",topic="{topic}"}} 3.0'
        assert sample in exposition

        release.set()
        deadline = time.monotonic() + LOOP_TIMEOUT_S
        while loop.commits != [0, 1, 2] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loop.commits == [0, 1, 2]
        assert loop.lag() == [PartitionLag(group, topic, 0, 0)]
    finally:
        release.set()
        stop.set()
        thread.join(10)
        stop_health_server(server)
    assert loop.lag() == [], "a closed consumer holds no partition"
