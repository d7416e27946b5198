"""/metrics of the consumers' health server (shared.health): the group's lag per partition as
Prometheus reads it, and a clear empty family, not an error, when the broker cannot say."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client.parser import text_string_to_metric_families

from shared.health import LAG_METRIC, HealthState, start_health_server, stop_health_server
from shared.kafka import PartitionLag


class Lags:
    """What a ConsumerLoop's lag() returns, or raises."""

    def __init__(self, lags: list[PartitionLag] | None = None, error: Exception | None = None) -> None:
        self.lags = lags or []
        self.error = error

    def lag(self) -> list[PartitionLag]:
        if self.error is not None:
            raise self.error
        return self.lags


@pytest.fixture
def served() -> Iterator[tuple[HealthState, str]]:
    state = HealthState("train-gru")
    server = start_health_server(0, state, host="127.0.0.1")
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        stop_health_server(server)


def scrape(url: str) -> tuple[str, dict[tuple[str, str, str], float]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == LAG_METRIC]
    assert family.type == "gauge"
    samples = {(s.labels["group"], s.labels["topic"], s.labels["partition"]): s.value for s in family.samples}
    return content_type, samples


def test_lag_of_each_partition_is_a_labelled_gauge_sample(served: tuple[HealthState, str]) -> None:
    state, url = served
    state.start_consuming(
        Lags(
            [
                PartitionLag("trainer-gru", "training-data", 0, 3),
                PartitionLag("trainer-gru", "training-data", 1, 0),
            ]
        )
    )
    content_type, samples = scrape(url)
    assert content_type.startswith("text/plain; version=")
    assert samples == {("trainer-gru", "training-data", "0"): 3.0, ("trainer-gru", "training-data", "1"): 0.0}


def test_before_consuming_the_family_is_there_without_samples(served: tuple[HealthState, str]) -> None:
    _, url = served
    assert scrape(url)[1] == {}


@pytest.mark.parametrize(
    "error",
    [KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out")), RuntimeError("Consumer closed")],
)
def test_a_broker_that_cannot_answer_leaves_the_family_empty_not_the_scrape_failed(
    served: tuple[HealthState, str], error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    state, url = served
    state.start_consuming(Lags(error=error))
    assert scrape(url)[1] == {}
    assert "consumer lag not available" in caplog.text
