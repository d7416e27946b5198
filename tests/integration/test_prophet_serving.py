"""A promoted Prophet served by the inference API against the real stack: the Prophet trainer's
model (fitted on PobleSec rows, logged to MLflow as the trainer logs it, its pointer in the
promotion bucket) answers POST /predict from the client's window, with the runtime's numbers."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from flts_cli.stack import StackConfig
from inference_container.app import create_app
from inference_container.settings import InferenceSettings
from nonml_container.settings import ProphetSettings
from nonml_container.trainer import ProphetTrainer
from preprocess_container.preprocessing import prepare_splits, read_raw_csv
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS
from shared.events import ModelType
from shared.mlflow_utils import ensure_experiment
from shared.model_runtime.forecasting import Forecast
from shared.model_runtime.pyfunc import save_mlflow_model
from shared.storage import ObjectStore
from tests.helpers.waiting import wait_until
from tests.integration.test_inference_support import (
    DATA_DIR,
    load_test_split,
    pointer_to,
    window_body,
    window_frame_of,
    write_pointer,
)

# prophet's own pandas calls warn about deprecations; nothing this project can change
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:prophet.*")

INPUT_LEN = 10
STEP = np.timedelta64(120, "s")
FIT_ROWS = 3000  # about four days of PobleSec: enough for a daily cycle, a fit of seconds
VALIDATION_START = 2550


@dataclass(frozen=True)
class LoggedProphet:
    run_id: str
    config_hash: str
    forecast: Forecast  # the trainer's in-memory forecast, before any storage


def log_prophet_run(stack: StackConfig, root: Path, identifier: str) -> LoggedProphet:
    """The Prophet trainer's fit on PobleSec rows, logged as the trainer service lays a run out."""
    prepared = prepare_splits(
        read_raw_csv((DATA_DIR / "PobleSec.csv").read_bytes(), "train"),
        read_raw_csv((DATA_DIR / "PobleSec_test.csv").read_bytes(), "test"),
    )
    settings = ProphetSettings.model_construct(
        PROPHET_CHANGEPOINTS=3, PROPHET_DAILY_FOURIER=4, PROPHET_WEEKLY_FOURIER=1, PROPHET_WORKERS=1
    )
    outcome = ProphetTrainer(settings).fit(
        prepared.train.iloc[:FIT_ROWS],
        VALIDATION_START,
        INPUT_LEN,
        threading.Event(),
        scaler=prepared.scaler,
        step=STEP,
    )
    assert outcome.extra_metrics["correction_rows"] > 0  # the fitted correction, not the fallback
    config_hash = hashlib.sha256(f"prophet-serving-{identifier}".encode()).hexdigest()
    meta = {
        "config_hash": config_hash,
        "dataset": "PobleSec",
        "identifier": identifier,
        "columns": list(FEATURE_COLUMNS),
        "scaler": prepared.scaler.to_dict(),
        "step_seconds": 120,
    }
    save_mlflow_model(
        root / "PROPHET",
        model_type="PROPHET",
        input_seq_len=INPUT_LEN,
        save_model=outcome.save_model,
        scaler=prepared.scaler,
        meta=meta,
        input_example=window_frame_of(load_test_split().iloc[:INPUT_LEN]),
    )
    client = MlflowClient(tracking_uri=stack.mlflow_url)
    run = client.create_run(
        ensure_experiment(client, "NonML"),
        run_name="PROPHET",
        tags={"config_hash": config_hash, "model_type": "PROPHET", "identifier": identifier},
    )
    run_id: str = run.info.run_id
    client.log_param(run_id, "input_sequence_length", INPUT_LEN)
    client.log_artifacts(run_id, str(root / "PROPHET"), "PROPHET")
    client.set_terminated(run_id)
    return LoggedProphet(run_id, config_hash, outcome.forecast)


@pytest.fixture(scope="module")
def identifier() -> str:
    return f"prophet-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def logged(stack: StackConfig, tmp_path_factory: pytest.TempPathFactory, identifier: str) -> LoggedProphet:
    return log_prophet_run(stack, tmp_path_factory.mktemp("prophet"), identifier)


@pytest.fixture(scope="module")
def client(
    stack: StackConfig, object_store: ObjectStore, logged: LoggedProphet, identifier: str
) -> Iterator[TestClient]:
    pointer = pointer_to(identifier, logged.run_id, ModelType.PROPHET, config_hash=logged.config_hash)
    write_pointer(object_store, pointer)
    env: dict[str, Any] = {
        **stack.service_env(),
        "IDENTIFIERS": identifier,
        "INFERENCE_LOG_ENABLED": "false",
        "TOPIC_MODEL_SELECTED": f"model-selected-{identifier}",
    }
    settings = InferenceSettings(**env)
    with TestClient(create_app(settings)) as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, 60, "the Prophet model to load")
        yield test_client


def _predict(client: TestClient, body: dict[str, Any]) -> np.ndarray:
    response = client.post(
        "/predict", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_type"] == "PROPHET"
    return np.array([[p[name] for name in KPI_COLUMNS] for p in answer["predictions"]])


def _window(body: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    data = body["data"]
    timestamps = pd.DatetimeIndex(data["ts"]).to_numpy(dtype="datetime64[ns]")
    return timestamps, np.column_stack([np.asarray(data[name], dtype=np.float64) for name in KPI_COLUMNS])


def test_a_promoted_prophet_answers_from_the_clients_window(
    client: TestClient, logged: LoggedProphet
) -> None:
    test_split = load_test_split()
    original = window_body(test_split, 1500, inference_length=3)
    # the same timestamps with other traffic: half of every value
    halved = json.loads(json.dumps(original))
    for name in KPI_COLUMNS:
        halved["data"][name] = [v * 0.5 for v in original["data"][name]]
    answers = [_predict(client, body) for body in (original, halved)]
    assert answers[0].shape == answers[1].shape == (3, len(KPI_COLUMNS))
    assert not np.allclose(answers[0][:, :2], answers[1][:, :2], rtol=0.05)
    # the served numbers are the trainer's forecast of the same window, after storage and loading
    for body, served in zip((original, halved), answers, strict=True):
        timestamps, kpis = _window(body)
        np.testing.assert_allclose(served, logged.forecast.predict(timestamps, kpis, 3), rtol=1e-9)
