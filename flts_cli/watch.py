"""Follow the pipeline through its Kafka events, as an outside observer (no commits)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel

from shared.kafka import PoisonMessage, decode, make_consumer


class EventWatcher:
    """Reads every event created since `since` on the given topics, in a private group."""

    def __init__(self, bootstrap: str, topics: dict[str, type[BaseModel]], since: datetime) -> None:
        self.topics = topics
        self.since = since
        group_id = f"flts-run-watch-{uuid.uuid4().hex[:8]}"
        self._consumer = make_consumer(bootstrap, group_id=group_id, client_id=group_id, fetch_wait_max_ms=10)
        self._consumer.subscribe(list(topics))

    def poll(self, timeout_s: float) -> tuple[str, BaseModel] | None:
        """The next well-formed event newer than `since`, or None after `timeout_s`."""
        msg = self._consumer.poll(timeout_s)
        if msg is None or msg.error():
            return None
        topic = msg.topic()
        if topic not in self.topics:
            return None
        try:
            event = decode(msg.value(), self.topics[topic])
        except PoisonMessage:
            return None
        created = getattr(event, "created_at", None)
        if created is not None and created < self.since:
            return None
        return topic, event

    def close(self) -> None:
        self._consumer.close()
