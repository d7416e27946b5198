"""Prometheus metrics of one inference process (each app gets its own registry)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Windows per forward pass: 1 is an idle service; up to MAX_BATCH (64) under a swarm.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Label values that are not a station's name.
OTHER_IDENTIFIER = "_other"  # a station past the bound, or a name that is not a loaded station
NO_IDENTIFIER = "_none"  # a request that never reached a station (bad body, other routes)


class IdentifierLabels:
    """The bound on the `identifier` label: every series multiplies by its distinct values, and a
    client can send any name, so only promoted stations this process has loaded or tried to load
    are admitted (on their first swap or failed load), at most `limit` of them; every other value
    is counted as `_other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._admitted: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def admit(self, identifier: str) -> str:
        """The label of a loaded station, admitting it while there is room."""
        with self._lock:
            if identifier not in self._admitted and len(self._admitted) < self.limit:
                self._admitted = self._admitted | {identifier}
        return self.label(identifier)

    def label(self, identifier: str | None) -> str:
        """The label a request for `identifier` is counted under (lock-free: one set lookup)."""
        if identifier is None:
            return NO_IDENTIFIER
        return identifier if identifier in self._admitted else OTHER_IDENTIFIER


class ServiceMetrics:
    """Request counts by route, status and station, latency, model swaps and load failures, log queue."""

    def __init__(self, max_identifiers: int = 200) -> None:
        # A registry per app: tests build several apps in one process without name clashes.
        self.registry = CollectorRegistry()
        self.identifiers = IdentifierLabels(max_identifiers)
        self.requests = Counter(
            "inference_requests",
            "HTTP requests answered, by route, status code and station",
            ["route", "status", "identifier"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inference_request_seconds",
            "Time to answer a request, by route and station",
            ["route", "identifier"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "inference_predicted_steps",
            "Forecast steps returned by /predict",
            registry=self.registry,
        )
        self.batch_windows = Histogram(
            "inference_batch_windows",
            "Windows predicted together in one micro-batch (one forward pass per stack)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.swaps = Counter(
            "inference_model_swaps", "Models swapped in, by station", ["identifier"], registry=self.registry
        )
        self.load_failures = Counter(
            "inference_model_load_failures",
            "Model loads that failed (retried), by station",
            ["identifier"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "inference_model_info",
            "1 for each station's model being served",
            ["identifier", "run_id", "model_type", "config_hash"],
            registry=self.registry,
        )
        self.model_ready = Gauge("inference_model_ready", "1 when a model is loaded", registry=self.registry)
        self.models_loaded = Gauge(
            "inference_models_loaded", "Stations with a model loaded", registry=self.registry
        )
        self.log_queue = Gauge(
            "inference_log_queue_length", "Prediction records waiting to be written", registry=self.registry
        )
        self.log_dropped = Counter(
            "inference_log_dropped", "Prediction records dropped (queue full)", registry=self.registry
        )
