"""Schemathesis against the OpenAPI schema with a real model loaded: no input the generator can
think of (valid by the schema or not) makes the service answer 5xx.

The schema is read from the app itself at import time (schemathesis' lazy `from_fixture` does
not work with pytest 9: it reads `request.node._nodeid`); the generated requests go to an app
whose model was logged to the session MLflow and promoted through the bucket.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from flts_cli.stack import StackConfig
from inference_container.app import create_app
from inference_container.deps import app_state
from inference_container.settings import InferenceSettings
from shared.data import KPI_COLUMNS
from shared.storage import ObjectStore
from tests.helpers.waiting import wait_until
from tests.integration.test_inference_support import log_model_run, make_pointer, write_pointer

LIMITS: dict[str, Any] = {"MAX_ROWS": 200, "MAX_INFERENCE_LENGTH": 24, "MAX_BODY_BYTES": 100_000}


def _schema_only_app() -> Any:
    # Connection values are never used: the app is built only to render its OpenAPI document.
    unused = "http://127.0.0.1:9"
    offline = InferenceSettings(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
        MLFLOW_TRACKING_URI=unused,
        MLFLOW_S3_ENDPOINT_URL=unused,
        AWS_ACCESS_KEY_ID=SecretStr("unused"),
        AWS_SECRET_ACCESS_KEY=SecretStr("unused"),
        **LIMITS,
    )
    return create_app(offline, run_background=False)


schema = schemathesis.openapi.from_dict(_schema_only_app().openapi())


@pytest.fixture(scope="module")
def fuzz_client(
    stack: StackConfig, object_store: ObjectStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    identifier = f"fuzz-{uuid.uuid4().hex[:8]}"
    logged = log_model_run(stack, tmp_path_factory.mktemp("fuzz-model"), identifier=identifier, seed=5)
    write_pointer(object_store, make_pointer(logged, identifier))
    values: dict[str, Any] = {
        **stack.service_env(),
        "IDENTIFIERS": identifier,
        "TOPIC_MODEL_SELECTED": f"model-selected-{identifier}",
        **LIMITS,
    }
    app_settings = InferenceSettings(**values)
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 60, "the model to load")
        yield client


@schema.parametrize()
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_input_makes_the_api_answer_5xx(case: Any, fuzz_client: TestClient) -> None:
    kwargs = case.as_transport_kwargs(base_url=str(fuzz_client.base_url))
    response = fuzz_client.request(**{k: v for k, v in kwargs.items() if k in _TESTCLIENT_ARGS})
    assert response.status_code < 500, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
    )


_TESTCLIENT_ARGS = {"method", "url", "params", "headers", "cookies", "json", "content", "data", "files"}


def _dumps(value: Any) -> bytes:
    # The stdlib encoder: orjson refuses integers beyond 64 bits, which clients may still send.
    return json.dumps(value).encode()


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["2018-02-28 02:34:00", "2018-02-28T02:36:00Z", "ts", "down"]),
    lambda children: (
        st.lists(children, max_size=12) | st.dictionaries(st.text(max_size=12), children, max_size=14)
    ),
    max_leaves=60,
)


@given(
    body=st.one_of(
        st.binary(max_size=300),
        _json_values.map(_dumps),
        st.fixed_dictionaries({"data": _json_values, "inference_length": _json_values}).map(_dumps),
    ),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]),
    query=st.dictionaries(
        st.sampled_from(["inference_length", "index_col"]), st.text(max_size=8), max_size=2
    ),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_arbitrary_bytes_and_json_shapes_never_get_a_5xx(
    fuzz_client: TestClient, body: bytes, content_type: str, query: dict[str, str]
) -> None:
    response = fuzz_client.post(
        "/predict", content=body, headers={"Content-Type": content_type}, params=query
    )
    assert 400 <= response.status_code < 500, (
        f"{response.status_code}: {response.text[:300]} for {body[:200]!r}"
    )
    assert response.json()["detail"]


@st.composite
def _valid_windows(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    rows = draw(st.integers(10, 40))
    start = draw(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1)))
    start = start.replace(microsecond=0)
    values = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False) | st.integers(-(10**12), 10**12)
    data: dict[str, Any] = {"ts": [(start + timedelta(minutes=2 * i)).isoformat() for i in range(rows)]}
    for name in KPI_COLUMNS:
        data[name] = draw(st.lists(values, min_size=rows, max_size=rows))
    horizon = draw(st.integers(1, LIMITS["MAX_INFERENCE_LENGTH"]))
    return {"data": data, "inference_length": horizon}, horizon


@given(window=_valid_windows())
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_any_well_formed_window_is_forecast_or_refused_never_a_5xx(
    fuzz_client: TestClient, window: tuple[dict[str, Any], int]
) -> None:
    body, horizon = window
    response = fuzz_client.post(
        "/predict", content=_dumps(body), headers={"Content-Type": "application/json"}
    )
    # 422 only for values outside the model's plausible range (negative, or far beyond its
    # training data), or, should any remain, inputs that drive the forecast beyond float range.
    assert response.status_code in (200, 422), response.text[:300]
    if response.status_code == 422:
        detail = response.json()["detail"]
        assert "outside the plausible range" in detail or "not finite" in detail, detail
        return
    predictions = response.json()["predictions"]
    assert len(predictions) == horizon
    assert all(isinstance(p[name], float) and p[name] >= 0 for p in predictions for name in KPI_COLUMNS)


@st.composite
def _plausible_windows(draw: st.DrawFn) -> tuple[dict[str, Any], list[list[float]], int]:
    """A window as fractions of each KPI's plausible ceiling (0 and 1 included), scaled in the test."""
    rows = draw(st.integers(10, 40))
    start = draw(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1)))
    stamps = [(start.replace(microsecond=0) + timedelta(minutes=2 * i)).isoformat() for i in range(rows)]
    fraction = st.sampled_from([0.0, 1.0]) | st.floats(min_value=0.0, max_value=1.0)
    fractions = draw(
        st.lists(
            st.lists(fraction, min_size=len(KPI_COLUMNS), max_size=len(KPI_COLUMNS)),
            min_size=rows,
            max_size=rows,
        )
    )
    horizon = draw(st.integers(1, LIMITS["MAX_INFERENCE_LENGTH"]))
    return {"data": {"ts": stamps}, "inference_length": horizon}, fractions, horizon


@given(window=_plausible_windows())
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_any_window_within_the_plausible_range_is_forecast_with_no_negative_kpi(
    fuzz_client: TestClient, window: tuple[dict[str, Any], list[list[float]], int]
) -> None:
    body, fractions, horizon = window
    app = fuzz_client.app
    assert isinstance(app, FastAPI)
    served = next(iter(app_state(app).manager.models.values()), None)
    assert served is not None
    values = np.asarray(fractions) * served.ranges.high
    for j, name in enumerate(KPI_COLUMNS):
        body["data"][name] = values[:, j].tolist()
    response = fuzz_client.post(
        "/predict", content=_dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text[:300]
    got = np.array([[p[name] for name in KPI_COLUMNS] for p in response.json()["predictions"]])
    assert got.shape == (horizon, len(KPI_COLUMNS))
    assert np.isfinite(got).all() and (got >= 0).all()
