"""The inference API in-process against the real stack: a model logged to MLflow, its pointer in
the promotion bucket. Bad input is a 4xx naming the problem; good input gives the model's numbers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from flts_cli.stack import StackConfig, free_port
from inference_container.app import InferenceAPI, create_app
from inference_container.deps import app_state
from inference_container.settings import InferenceSettings
from shared.data import KPI_COLUMNS
from shared.model_runtime.networks import ModelSpec, RecurrentNetwork, build_model
from shared.storage import ObjectStore
from tests.helpers.waiting import wait_until
from tests.integration import test_inference_support as inference_support
from tests.integration.test_inference_support import (
    LoggedModel,
    direct_prediction,
    load_test_split,
    log_model_run,
    make_pointer,
    window_body,
    write_pointer,
)


def settings_for(stack: StackConfig, **overrides: Any) -> InferenceSettings:
    return InferenceSettings(**{**stack.service_env(), **overrides})


@pytest.fixture(scope="module")
def identifier() -> str:
    return f"api-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def logged(stack: StackConfig, tmp_path_factory: pytest.TempPathFactory, identifier: str) -> LoggedModel:
    return log_model_run(stack, tmp_path_factory.mktemp("model"), identifier=identifier, seed=1)


@pytest.fixture(scope="module")
def test_split() -> pd.DataFrame:
    return load_test_split()


@pytest.fixture(scope="module")
def client(
    stack: StackConfig, object_store: ObjectStore, logged: LoggedModel, identifier: str
) -> Iterator[TestClient]:
    write_pointer(object_store, make_pointer(logged, identifier))
    settings = settings_for(
        stack,
        IDENTIFIERS=identifier,
        MAX_BODY_BYTES=200_000,
        MAX_ROWS=500,
        MAX_INFERENCE_LENGTH=48,
        INFERENCE_LOG_ENABLED="true",
        INFERENCE_LOG_FLUSH_S=0.2,
        TOPIC_MODEL_SELECTED=f"model-selected-{identifier}",
    )
    with TestClient(create_app(settings)) as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, 60, "the model to load")
        yield test_client


def post(client: TestClient, body: Any, **kwargs: Any) -> Any:
    return client.post(
        "/predict", content=orjson.dumps(body), headers={"Content-Type": "application/json"}, **kwargs
    )


def test_prediction_equals_a_direct_call_of_the_model_on_the_same_window(
    client: TestClient, logged: LoggedModel, test_split: pd.DataFrame
) -> None:
    for start in (0, 1234, 3000):
        response = post(client, window_body(test_split, start))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "SUCCESS"
        assert body["run_id"] == logged.run_id
        assert body["model_type"] == "GRU"
        assert body["config_hash"] == logged.config_hash
        expected = direct_prediction(logged, test_split.iloc[start : start + 10])
        got = np.array([[p[name] for name in KPI_COLUMNS] for p in body["predictions"]])
        # Compared in the network's float32 MinMax units: a value small against its column's
        # range turns one float32 step there into ~1e-6 relative in original units.
        to_model_units = logged.scaler.transform_array
        np.testing.assert_allclose(to_model_units(got), to_model_units(expected), rtol=0, atol=1e-6)
        next_ts = test_split.index[start + 9] + pd.Timedelta(minutes=2)
        assert body["predictions"][0]["ts"] == next_ts.strftime("%Y-%m-%dT%H:%M:%S")


def test_horizon_comes_back_at_the_training_step_in_original_units(
    client: TestClient, test_split: pd.DataFrame
) -> None:
    response = post(client, window_body(test_split, 100, rows=30), params={"inference_length": 6})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 6
    stamps = pd.DatetimeIndex([p["ts"] for p in predictions])
    assert (stamps.to_series().diff().dropna() == pd.Timedelta(minutes=2)).all()
    assert stamps[0] == test_split.index[129] + pd.Timedelta(minutes=2)
    downs = np.array([p["down"] for p in predictions])
    # Original units: `down` is in bits per step (1e6..1e9 here), not MinMax units.
    assert np.isfinite(downs).all() and np.abs(downs).max() > 1e5


def _bad_body(test_split: pd.DataFrame, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    body = window_body(test_split, 0)
    mutate(body)
    return body


BAD_REQUESTS: dict[str, tuple[Callable[[pd.DataFrame], Any], int, str]] = {
    "duplicate timestamps": (
        lambda f: _bad_body(f, lambda b: b["data"]["ts"].__setitem__(3, b["data"]["ts"][2])),
        422,
        "duplicate timestamps",
    ),
    "unordered timestamps": (
        lambda f: _bad_body(f, lambda b: b["data"]["ts"].reverse()),
        422,
        "unordered timestamps",
    ),
    "wrong step": (
        lambda f: {"data": {**window_body(f.iloc[::2], 0)["data"]}},
        422,
        "must be 120 s apart",
    ),
    "string value": (
        lambda f: _bad_body(f, lambda b: b["data"]["down"].__setitem__(0, "1.0")),
        422,
        "column 'down' row 0: expected a number, got a string",
    ),
    "missing KPI": (lambda f: _bad_body(f, lambda b: b["data"].pop("rnti_count")), 422, "rnti_count"),
    "too few rows": (lambda f: window_body(f, 0, rows=9), 422, "at least 10 rows, got 9"),
    "too many rows": (lambda f: window_body(f, 0, rows=501), 413, "too many rows"),
    "horizon above max": (lambda f: window_body(f, 0, inference_length=49), 422, "between 1 and 48"),
    "negative traffic": (
        lambda f: _bad_body(f, lambda b: b["data"]["down"].__setitem__(4, -1000.0)),
        422,
        "column 'down' row 4: -1000 is outside the plausible range [0, ",
    ),
    "a magnitude of 1e30": (
        lambda f: _bad_body(f, lambda b: b["data"]["rb_down"].__setitem__(9, 1e30)),
        422,
        "column 'rb_down' row 9: 1e+30 is outside the plausible range [0, ",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_request_is_a_4xx_whose_message_names_the_problem(
    client: TestClient, test_split: pd.DataFrame, case: str
) -> None:
    build, status, message = BAD_REQUESTS[case]
    response = post(client, build(test_split))
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_nan_infinity_and_malformed_json_are_400(client: TestClient) -> None:
    for raw, message in (
        (b'{"data": {"down": [NaN]}}', "NaN and Infinity"),
        (b'{"data": {"down": [1e999]}}', "NaN and Infinity"),
        (b'{"data": {', "not valid JSON"),
    ):
        response = client.post("/predict", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 400
        assert message in response.json()["detail"]


def test_wrong_content_type_is_415(client: TestClient, test_split: pd.DataFrame) -> None:
    response = client.post(
        "/predict", content=orjson.dumps(window_body(test_split, 0)), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


def test_oversized_body_is_413_by_declared_length_and_while_streaming(client: TestClient) -> None:
    big = b'{"data": "' + b"x" * 300_000 + b'"}'
    response = client.post("/predict", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "exceeds the limit of 200000 bytes" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for _ in range(30):
            yield b" " * 10_000  # no Content-Length: only the streaming check can stop this

    response = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_health_model_and_metrics_describe_the_served_model(
    client: TestClient, logged: LoggedModel, identifier: str
) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["service"] == "inference-api" and health["model_ready"] is True
    assert "queue_length" in health
    model = client.get("/model").json()
    assert model["run_id"] == logged.run_id and model["input_seq_len"] == 10 and model["step_seconds"] == 120
    metrics = client.get("/metrics").text
    assert f'inference_requests_total{{identifier="{identifier}",route="/predict",status="200"}}' in metrics
    assert f'run_id="{logged.run_id}"' in metrics
    assert "inference_request_seconds_bucket" in metrics


def test_predictions_are_appended_to_inference_logs(
    client: TestClient, object_store: ObjectStore, identifier: str, test_split: pd.DataFrame
) -> None:
    assert post(client, window_body(test_split, 50)).status_code == 200

    def logged_keys() -> list[str]:
        return object_store.list_keys("inference-logs", prefix=f"{identifier}/")

    wait_until(lambda: bool(logged_keys()), 15, "an inference-log object")
    key = logged_keys()[0]
    parts = key.split("/")
    assert len(parts) == 3 and len(parts[1]) == 8 and parts[2].endswith(".json")
    batch = object_store.get_json("inference-logs", key)
    assert batch["records"][0]["identifier"] == identifier
    assert len(batch["records"][0]["predictions"]) >= 1


def test_without_a_model_readyz_and_predict_answer_503_with_retry_after(
    stack: StackConfig, test_split: pd.DataFrame
) -> None:
    settings = settings_for(
        stack, IDENTIFIERS="nobody-promoted-this", TOPIC_MODEL_SELECTED="model-selected-none"
    )
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json()["model_ready"] is False
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "Retry-After" in ready.headers
        response = post(c, window_body(test_split, 0))
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert "no model" in response.json()["detail"]


def test_unreachable_s3_and_mlflow_at_start_keep_the_service_alive_and_not_ready(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = InferenceSettings(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        MLFLOW_TRACKING_URI=dead,
        MLFLOW_S3_ENDPOINT_URL=dead,
        AWS_ACCESS_KEY_ID=SecretStr("test"),
        AWS_SECRET_ACCESS_KEY=SecretStr("test"),
        MODEL_RELOAD_BACKOFF_S=0.1,
    )
    with TestClient(create_app(settings)) as c:
        wait_until(lambda: c.get("/readyz").json()["pointer_error"] is not None, 30, "a failed pointer read")
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503


def test_concurrent_requests_are_batched_and_each_gets_its_own_windows_forecast(
    client: TestClient, logged: LoggedModel, test_split: pd.DataFrame
) -> None:
    app = client.app
    assert isinstance(app, FastAPI)
    starts = list(range(0, 3900, 100))
    batcher = app_state(app).predict.batcher
    batches_before, windows_before = batcher.batches, batcher.windows

    async def fire() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inference") as c:
            return await asyncio.gather(
                *(
                    c.post(
                        "/predict",
                        content=orjson.dumps(window_body(test_split, s)),
                        headers={"Content-Type": "application/json"},
                    )
                    for s in starts
                )
            )

    responses = asyncio.run(fire())
    for start, response in zip(starts, responses, strict=True):
        assert response.status_code == 200, response.text
        got = np.array([[p[name] for name in KPI_COLUMNS] for p in response.json()["predictions"]])
        np.testing.assert_allclose(
            got, direct_prediction(logged, test_split.iloc[start : start + 10]), rtol=1e-5
        )
    assert batcher.windows - windows_before == len(starts)
    assert batcher.batches - batches_before < len(starts)


def test_openapi_documents_predict_with_real_example_windows(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    content = operation["requestBody"]["content"]["application/json"]
    example = content["examples"]["one_step"]["value"]
    assert len(example["data"]["ts"]) == 10 and set(KPI_COLUMNS) <= set(example["data"])
    assert {"400", "413", "415", "422", "503"} <= set(operation["responses"])
    # The plausible-range rule is part of the contract a client reads.
    assert (
        "training maximum of that KPI plus 10 times its training range"
        in (operation["responses"]["422"]["description"])
    )
    columns = content["schema"]["properties"]["data"]["oneOf"][0]
    assert all(columns["properties"][name]["items"]["minimum"] == 0 for name in KPI_COLUMNS)
    # The documented example is itself a valid request.
    response = post(client, example)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1


def _ceilings(logged: LoggedModel) -> np.ndarray:
    """The served model's plausible ceilings: train maximum plus 10 train ranges, per KPI."""
    lo = np.asarray(logged.scaler.data_min, dtype=np.float64)
    span = np.asarray(logged.scaler.data_range, dtype=np.float64)
    ceilings: np.ndarray = lo + span + 10 * span
    return ceilings


def _predictions(response: httpx.Response) -> np.ndarray:
    return np.array([[p[name] for name in KPI_COLUMNS] for p in response.json()["predictions"]])


def test_a_window_of_negative_traffic_is_refused_with_the_range_of_the_models_training_data(
    client: TestClient, logged: LoggedModel, test_split: pd.DataFrame
) -> None:
    body = window_body(test_split, 0)
    body["data"]["down"] = [-abs(v) for v in body["data"]["down"]]
    body["data"]["up"] = [-abs(v) for v in body["data"]["up"]]
    response = post(client, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    down, up = _ceilings(logged)[:2]
    assert f"column 'down' row 0: {body['data']['down'][0]:.6g} is outside" in detail
    assert f"plausible range [0, {down:.6g}]" in detail
    assert f"column 'up' row 0: {body['data']['up'][0]:.6g} is outside" in detail
    assert f"plausible range [0, {up:.6g}]" in detail
    assert "'rnti_count'" not in detail


def test_values_from_exactly_zero_up_to_the_ceiling_are_forecast_never_below_zero(
    client: TestClient, logged: LoggedModel, test_split: pd.DataFrame
) -> None:
    zeros = window_body(test_split, 0, inference_length=5)
    for name in KPI_COLUMNS:
        zeros["data"][name] = [0.0] * 10
    app = client.app
    assert isinstance(app, FastAPI)
    served = next(iter(app_state(app).manager.models.values()), None)
    assert served is not None
    np.testing.assert_allclose(served.ranges.high, _ceilings(logged), rtol=1e-12)
    at_ceiling = window_body(test_split, 0)
    for name, ceiling in zip(KPI_COLUMNS, served.ranges.high.tolist(), strict=True):
        at_ceiling["data"][name][-1] = ceiling
    for body in (zeros, at_ceiling):
        response = post(client, body)
        assert response.status_code == 200, response.text
        got = _predictions(response)
        assert np.isfinite(got).all() and (got >= 0).all()


@pytest.fixture(scope="module")
def route_client(stack: StackConfig, client: TestClient, identifier: str) -> Iterator[TestClient]:
    """The same model served with PREDICT_FAST_PATH off: every request through the FastAPI route."""
    settings = settings_for(
        stack,
        IDENTIFIERS=identifier,
        MAX_BODY_BYTES=200_000,
        MAX_ROWS=500,
        MAX_INFERENCE_LENGTH=48,
        PREDICT_FAST_PATH=False,
        TOPIC_MODEL_SELECTED=f"model-selected-{identifier}",
    )
    with TestClient(create_app(settings)) as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, 60, "the model to load")
        yield test_client


def test_fast_path_and_fastapi_route_answer_every_request_identically(
    client: TestClient, route_client: TestClient, test_split: pd.DataFrame
) -> None:
    fast_app, route_app = client.app, route_client.app
    assert isinstance(fast_app, InferenceAPI) and isinstance(route_app, InferenceAPI)
    assert fast_app.fast_predict and not route_app.fast_predict
    zeros = window_body(test_split, 7)
    for name in KPI_COLUMNS:
        zeros["data"][name] = [0] * 10
    bodies: list[bytes] = [
        orjson.dumps(window_body(test_split, 300, inference_length=4)),
        orjson.dumps(zeros),
        b'{"data": {',
        *(orjson.dumps(build(test_split)) for build, _, _ in BAD_REQUESTS.values()),
    ]
    for raw in bodies:
        answers = [
            c.post("/predict", content=raw, headers={"Content-Type": "application/json"})
            for c in (client, route_client)
        ]
        fast, route = answers
        assert (fast.status_code, fast.headers["content-type"]) == (
            route.status_code,
            route.headers["content-type"],
        ), raw[:200]
        assert fast.json() == route.json(), raw[:200]


def _falling_model(spec: ModelSpec) -> RecurrentNetwork:
    """A network that forecasts down and up 10 train ranges below the last observed value."""
    model = build_model(spec)
    with torch.no_grad():
        bias = torch.zeros_like(model.head.bias).view(spec.output_seq_len, spec.n_targets)
        bias[:, [KPI_COLUMNS.index("down"), KPI_COLUMNS.index("up")]] = -10.0
        model.head.bias.copy_(bias.view(-1))
    return model


@pytest.fixture(scope="module")
def falling(
    stack: StackConfig, object_store: ObjectStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, LoggedModel]]:
    identifier = f"falling-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:
        # log_model_run builds a fresh network; this one must predict below zero.
        patch.setattr(inference_support, "build_model", _falling_model)
        logged = log_model_run(stack, tmp_path_factory.mktemp("falling"), identifier=identifier, seed=3)
    write_pointer(object_store, make_pointer(logged, identifier))
    topic = f"model-selected-{identifier}"
    settings = settings_for(stack, IDENTIFIERS=identifier, TOPIC_MODEL_SELECTED=topic)
    with TestClient(create_app(settings)) as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, 60, "the model to load")
        yield test_client, logged


def test_a_model_that_forecasts_below_zero_is_answered_with_zero_never_a_negative_kpi(
    falling: tuple[TestClient, LoggedModel], test_split: pd.DataFrame
) -> None:
    falling_client, logged = falling
    down, up = KPI_COLUMNS.index("down"), KPI_COLUMNS.index("up")
    for start in (0, 1500, 3000):
        unclipped = direct_prediction(logged, test_split.iloc[start : start + 10])
        assert (unclipped[:, [down, up]] < 0).all()  # what the network alone says
        response = post(falling_client, window_body(test_split, start, inference_length=6))
        assert response.status_code == 200, response.text
        got = _predictions(response)
        assert got.shape == (6, len(KPI_COLUMNS))
        assert (got >= 0).all()
        assert (got[:, [down, up]] == 0).all()
        # The other KPIs are untouched by the floor: step 1 is the network's own forecast.
        others = [j for j in range(len(KPI_COLUMNS)) if j not in (down, up)]
        to_model_units = logged.scaler.transform_array
        np.testing.assert_allclose(
            to_model_units(got[:1])[:, others], to_model_units(unclipped)[:, others], rtol=0, atol=1e-6
        )
