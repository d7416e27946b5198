"""Helpers for the reliability tier (no tests here): HTTP probes, unique names, the latency bar.

Every service here is a real `python -m <package>` process (tests.helpers.processes) talking to a
real broker, S3 server and MLflow server; tests.helpers.topics reads what they wrote.
"""

from __future__ import annotations

import uuid

import httpx

# The inference latency bar of the reliability tier: p99 under 30 ms.
P99_BAR_S = 0.030


def http_status(url: str, timeout_s: float = 2.0) -> int:
    """The status of a GET, or 0 when nothing answers."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code
    except httpx.HTTPError:
        return 0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
