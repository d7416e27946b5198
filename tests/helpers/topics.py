"""Read what services wrote to a topic, without joining a consumer group."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

Record = tuple[str | None, dict[str, Any]]


def _json_object(raw: bytes | None) -> dict[str, Any]:
    """The message body as a JSON object; anything else comes back as {"_raw": ...}."""
    if raw is None:
        return {"_raw": None}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"_raw": raw.decode("utf-8", "replace")[:200]}
    return value if isinstance(value, dict) else {"_raw": value}


def read_topic(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list[Record]:
    """Every message on `topic` up to its current end, by assignment (no group join to wait for),
    as (key, JSON object) pairs. Values that are not JSON objects come back as {"_raw": text}."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "fetch.message.max.bytes": 4_000_000,
        }
    )
    try:
        # Metadata of all topics, not of `topic`: naming a topic may auto-create it on this broker,
        # and a reader must never create what a service is supposed to recreate itself.
        metadata = consumer.list_topics(timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        ends: dict[int, int] = {}
        assignments = []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
                assignments.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
        consumer.assign(assignments)
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            partition, offset, key = msg.partition(), msg.offset(), msg.key()
            # A message poll() returns without an error always has its partition and offset.
            assert partition is not None and offset is not None
            out.append((key.decode("utf-8", "replace") if key else None, _json_object(msg.value())))
            if offset + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
        assert not ends, f"could not read {topic} to its end within {timeout_s:.0f}s"
        return out
    finally:
        consumer.close()
