"""Prometheus metrics of one inference process (each app gets its own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """Request counts by route and status, latency, model swaps and load failures, log queue."""

    def __init__(self) -> None:
        # A registry per app: tests build several apps in one process without name clashes.
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "inference_requests",
            "HTTP requests answered, by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inference_request_seconds",
            "Time to answer a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "inference_predicted_steps",
            "Forecast steps returned by /predict",
            registry=self.registry,
        )
        self.swaps = Counter("inference_model_swaps", "Models swapped in", registry=self.registry)
        self.load_failures = Counter(
            "inference_model_load_failures", "Model loads that failed (retried)", registry=self.registry
        )
        self.model_info = Gauge(
            "inference_model_info",
            "1 for the model being served",
            ["identifier", "run_id", "model_type", "config_hash"],
            registry=self.registry,
        )
        self.model_ready = Gauge("inference_model_ready", "1 when a model is loaded", registry=self.registry)
        self.log_queue = Gauge(
            "inference_log_queue_length", "Prediction records waiting to be written", registry=self.registry
        )
        self.log_dropped = Counter(
            "inference_log_dropped", "Prediction records dropped (queue full)", registry=self.registry
        )
