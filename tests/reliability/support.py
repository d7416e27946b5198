"""Helpers for the reliability tier (no tests here): service processes, topic readers, waits.

Every service here is a real `python -m <package>` process talking to a real broker, S3 server
and MLflow server; the helpers only start them, read what they wrote and wait for conditions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

REPO_ROOT = Path(__file__).resolve().parents[2]

# The inference bar of the issue: p99 under 30 ms.
P99_BAR_S = 0.030


def wait_until(check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class ServiceProcess:
    """`python -m <module>` in its own session, output to a log file the test can read."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (configure_logging writes one object per line)."""
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    records.append(value)
        return records

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group: no handler runs, nothing is committed or cleaned."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


Record = tuple[str | None, dict[str, Any]]


def read_topic(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list[Record]:
    """Every message on `topic` up to its current end, by assignment (no group join to wait for).
    Values that are not JSON objects come back as {"_raw": text}."""
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
            key = msg.key().decode("utf-8", "replace") if msg.key() else None
            try:
                value = json.loads(msg.value())
            except ValueError:
                value = {"_raw": msg.value().decode("utf-8", "replace")[:200]}
            out.append((key, value if isinstance(value, dict) else {"_raw": value}))
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                ends.pop(msg.partition(), None)
        assert not ends, f"could not read {topic} to its end within {timeout_s:.0f}s"
        return out
    finally:
        consumer.close()


def http_status(url: str, timeout_s: float = 2.0) -> int:
    """The status of a GET, or 0 when nothing answers."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code
    except httpx.HTTPError:
        return 0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
