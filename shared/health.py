"""A tiny HTTP server for Kubernetes probes, `/healthz` (liveness) and `/readyz` (readiness), and
for Prometheus, `/metrics`: the consumer group's lag on every partition of its topics.

It starts before a service waits for its dependencies, so a startupProbe sees the process answer
while the bounded waits run:
- starting (waiting for Kafka, MLflow, ...): live, not ready. The waits are bounded, so a start-up
  that outlasts its budget (every wait's timeout plus a grace) is stuck: liveness says 503 and the
  kubelet restarts the pod instead of waiting on it forever.
- consuming: live; ready when every readiness check passes (cached, so a burst of probes never
  turns into a burst of requests to a dependency).
- stopped consuming: live, not ready.

The lag is asked of the broker when Prometheus scrapes (ConsumerLoop.lag), not when the loop polls:
a trainer fitting a model for minutes polls nothing meanwhile, and its queue is what an operator
wants to see then. A broker that does not answer leaves the family empty and logs why.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from confluent_kafka import KafkaException
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.kafka import PartitionLag

log = logging.getLogger(__name__)

LAG_METRIC = "consumer_lag_messages"

# Time a start-up may take beyond its waits' own timeouts: imports, client set-up, restoring state.
STARTUP_GRACE_S = 60.0


def startup_budget_s(startup_timeout_s: float, waits: int) -> float:
    """The longest a healthy start-up takes: `waits` bounded waits of `startup_timeout_s` each,
    plus STARTUP_GRACE_S. A Kubernetes startupProbe should allow at least this much."""
    return startup_timeout_s * waits + STARTUP_GRACE_S


class LagSource(Protocol):
    def lag(self) -> list[PartitionLag]: ...


class ConsumerLagCollector(Collector):
    """`consumer_lag_messages{group, topic, partition}` of the consumer a HealthState watches."""

    def __init__(self, state: HealthState) -> None:
        self._state = state

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        source = self._state.lag_source
        if source is not None:
            try:
                lags = source.lag()
            except (KafkaException, RuntimeError) as exc:  # RuntimeError: closed under our feet
                log.warning("consumer lag not available", extra={"error": str(exc)})
                lags = []
            for lag in lags:
                family.add_metric([lag.group, lag.topic, str(lag.partition)], lag.messages)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            LAG_METRIC,
            "Messages the consumer group has not committed yet, per partition of its topics "
            "(group-wide: every replica reports the same figures)",
            labels=["group", "topic", "partition"],
        )


class HealthState:
    """What the probes answer, updated by the service as it starts and runs."""

    def __init__(
        self,
        service: str,
        *,
        ready_checks: Mapping[str, Callable[[], bool]] | None = None,
        startup_budget_s: float | None = None,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.consuming = threading.Event()
        self._checks = dict(ready_checks or {})
        self._budget_s = startup_budget_s
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._started_at = clock()
        self._waiting_for: str | None = None
        self._started = False
        self._results: dict[str, tuple[float, bool]] = {}
        self.lag_source: LagSource | None = None
        # Per state, not the process-wide default registry: tests run several services in one process.
        self.registry = CollectorRegistry()
        self.registry.register(ConsumerLagCollector(self))

    # -- what the service reports ----------------------------------------------------------------
    def waiting_for(self, dependency: str) -> None:
        """The start-up now waits for `dependency` (shown on both probes)."""
        with self._lock:
            self._waiting_for = dependency
        log.info("waiting for a dependency", extra={"dependency": dependency})

    def start_consuming(self, lag_source: LagSource | None = None) -> None:
        """Start-up is over: the consumer loop (`lag_source`, whose lag /metrics exports) runs."""
        self.lag_source = lag_source
        with self._lock:
            self._waiting_for = None
            self._started = True
        self.consuming.set()

    def stop_consuming(self) -> None:
        self.consuming.clear()

    # -- what the probes see ---------------------------------------------------------------------
    def check(self, name: str) -> bool:
        """The cached result of the readiness check `name`."""
        now = self._clock()
        with self._lock:
            checked_at, ok = self._results.get(name, (float("-inf"), False))
            if now - checked_at < self._cache_s:
                return ok
        ok = bool(self._checks[name]())
        with self._lock:
            self._results[name] = (now, ok)
        return ok

    def starting(self) -> bool:
        """True until the consumer loop first runs."""
        with self._lock:
            return not self._started and not self.consuming.is_set()

    def liveness(self) -> tuple[bool, dict[str, object]]:
        starting = self.starting()
        elapsed = self._clock() - self._started_at
        stuck = starting and self._budget_s is not None and elapsed > self._budget_s
        body: dict[str, object] = {
            "status": "stuck" if stuck else "ok",
            "service": self.service,
            "consuming": self.consuming.is_set(),
        }
        if starting:
            with self._lock:
                body["starting"] = {"waiting_for": self._waiting_for, "seconds": round(elapsed, 1)}
        return not stuck, body

    def readiness(self) -> tuple[bool, dict[str, object]]:
        consuming = self.consuming.is_set()
        # Dependencies are asked only once consuming: before that the answer is "not ready" anyway.
        results = {name: self.check(name) if consuming else False for name in self._checks}
        ready = consuming and all(results.values())
        body: dict[str, object] = {
            "status": "ready" if ready else "not ready",
            "service": self.service,
            "consuming": consuming,
            **results,
        }
        if self.starting():
            with self._lock:
                body["waiting_for"] = self._waiting_for
        return ready, body


def _handler_for(state: HealthState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                live, body = state.liveness()
                self._reply(200 if live else 503, body)
            elif path == "/readyz":
                ready, body = state.readiness()
                self._reply(200 if ready else 503, body)
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(state.registry))
            else:
                self._reply(404, {"error": f"no route {path}"})

        def _reply(self, code: int, body: dict[str, object]) -> None:
            self._send(code, "application/json", json.dumps(body).encode("utf-8"))

        def _send(self, code: int, content_type: str, data: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            # Probes hit every few seconds; access lines would drown the service's own log.
            log.debug("health request", extra={"request": format % args})

    return Handler


def start_health_server(port: int, state: HealthState, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve probes from a daemon thread; port 0 picks a free port (read `server_address`)."""
    server = ThreadingHTTPServer((host, port), _handler_for(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="health", daemon=True)
    thread.start()
    log.info("health server listening", extra={"port": server.server_address[1], "service": state.service})
    return server


def stop_health_server(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()
