"""The fleet's pieces that need no services: IDENTIFIERS parsing, which station a request names,
and the bound on the metrics' identifier label."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from inference_container.settings import InferenceSettings
from inference_container.telemetry import NO_IDENTIFIER, OTHER_IDENTIFIER, IdentifierLabels, ServiceMetrics
from inference_container.validation import RequestError, requested_station

OFFLINE: dict[str, Any] = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
    "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": SecretStr("unused"),
    "AWS_SECRET_ACCESS_KEY": SecretStr("unused"),
}


def test_identifiers_is_a_comma_list_from_the_environment_and_blank_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDENTIFIERS", " PobleSec, ElBorn,,PobleSec ")
    assert InferenceSettings(**OFFLINE).IDENTIFIERS == ("PobleSec", "ElBorn")
    monkeypatch.setenv("IDENTIFIERS", " ")
    assert InferenceSettings(**OFFLINE).IDENTIFIERS is None
    monkeypatch.delenv("IDENTIFIERS")
    assert InferenceSettings(**OFFLINE).IDENTIFIERS is None
    with pytest.raises(ValidationError, match="must not contain '/'"):
        InferenceSettings(**{**OFFLINE, "IDENTIFIERS": "a/b"})


def test_the_query_names_the_station_over_the_body_and_none_means_omitted() -> None:
    assert requested_station({"identifier": "A"}, None) == "A"
    assert requested_station({"identifier": "A"}, "B") == "B"
    assert requested_station({"data": {}}, None) is None
    for payload, query, message in (
        ({"identifier": 3}, None, "'identifier' must be a station name (string), got an integer"),
        ({"identifier": " "}, None, "'identifier' is empty"),
        ({}, "", "query parameter identifier is empty"),
        ([1], None, "body must be a JSON object"),
    ):
        with pytest.raises(RequestError, match=re.escape(message)) as caught:
            requested_station(payload, query)
        assert caught.value.status == 422


def test_the_identifier_label_names_only_loaded_stations_up_to_the_bound() -> None:
    labels = IdentifierLabels(limit=2)
    assert labels.label("A") == OTHER_IDENTIFIER  # requested but never loaded: not admitted
    assert labels.admit("A") == "A" and labels.admit("B") == "B"
    assert labels.admit("C") == OTHER_IDENTIFIER  # past the bound
    assert labels.admit("A") == "A"
    assert [labels.label(name) for name in ("A", "B", "C", "made-up")] == [
        "A",
        "B",
        OTHER_IDENTIFIER,
        OTHER_IDENTIFIER,
    ]
    assert labels.label(None) == NO_IDENTIFIER


def test_a_client_naming_many_stations_cannot_grow_the_metrics() -> None:
    metrics = ServiceMetrics(max_identifiers=3)
    metrics.identifiers.admit("A")
    for i in range(1000):
        metrics.requests.labels("/predict", "404", metrics.identifiers.label(f"station-{i}")).inc()
    samples = [s for m in metrics.requests.collect() for s in m.samples if s.name.endswith("_total")]
    assert {s.labels["identifier"] for s in samples} == {OTHER_IDENTIFIER}
    assert samples[0].value == 1000
