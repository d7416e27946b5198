"""Append predictions to `inference-logs/<identifier>/<YYYYMMDD>/<timestamp>-<uuid>.json`.

Off the request path: handlers put a record on a bounded queue (never blocking; a full queue
drops and counts), and one thread writes a batch object every INFERENCE_LOG_BATCH_SIZE records
or INFERENCE_LOG_FLUSH_S seconds. One object per batch keeps the prefix append-safe.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson

from inference_container.telemetry import ServiceMetrics
from shared.retry import Backoff
from shared.storage import ObjectStore

log = logging.getLogger(__name__)

# Waits between attempts to write one batch: 1, 2, 4, 8, 10 s.
WRITE_BACKOFF = Backoff(1.0, 10.0)


def batch_key(identifier: str, when: datetime) -> str:
    stamp = when.strftime("%Y%m%dT%H%M%S%fZ")
    return f"{identifier}/{when:%Y%m%d}/{stamp}-{uuid.uuid4().hex}.json"


class InferenceLogWriter:
    """A bounded queue of prediction records and the thread that writes them in batches."""

    def __init__(
        self,
        store_factory: Any,
        bucket: str,
        batch_size: int,
        flush_s: float,
        queue_max: int,
        metrics: ServiceMetrics | None = None,
        max_write_attempts: int = 5,
    ) -> None:
        self._store_factory = store_factory
        self._store: ObjectStore | None = None
        self.bucket = bucket
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.metrics = metrics
        self.max_write_attempts = max_write_attempts
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_max)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written_batches = 0
        self.dropped = 0

    @property
    def queue_length(self) -> int:
        return self._queue.qsize()

    def offer(self, record: dict[str, Any]) -> bool:
        """Queue a record without blocking; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.log_dropped.inc()
            return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (bounded by timeout_s), then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch:
                self._write(batch)
            if self._stop.is_set() and self._queue.empty():
                return

    def _collect(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._stop.is_set() and self._queue.empty()):
                break
            try:
                batch.append(self._queue.get(timeout=min(remaining, 0.2)))
            except queue.Empty:
                continue
        return batch

    def _write(self, batch: list[dict[str, Any]]) -> None:
        by_identifier: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in batch:
            by_identifier[str(record.get("identifier", "unknown"))].append(record)
        for identifier, records in by_identifier.items():
            now = datetime.now(UTC)
            key = batch_key(identifier, now)
            body = orjson.dumps(
                {
                    "identifier": identifier,
                    "written_at": now.isoformat(),
                    "count": len(records),
                    "records": records,
                }
            )
            written = False
            for attempt in range(1, self.max_write_attempts + 1):
                try:
                    if self._store is None:
                        self._store = self._store_factory()
                    self._store.put_bytes(self.bucket, key, body, content_type="application/json")
                    written = True
                    break
                except Exception as exc:  # S3 trouble: retry, then drop this batch with a log line
                    log.warning(
                        "inference log write failed",
                        extra={"bucket": self.bucket, "key": key, "attempt": attempt, "error": str(exc)},
                    )
                    # While stopping, two attempts are enough: shutdown must not hang on S3.
                    if self._stop.wait(WRITE_BACKOFF.delay(attempt)) and attempt >= 2:
                        break
            if written:
                self.written_batches += 1
            else:
                self.dropped += len(records)
                if self.metrics is not None:
                    self.metrics.log_dropped.inc(len(records))
        if self.metrics is not None:
            self.metrics.log_queue.set(self._queue.qsize())
