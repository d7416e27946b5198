"""The champion is a real MLflow Model: trainers (GRU, Prophet) -> evaluator -> registry alias, then
`mlflow.pyfunc.load_model("models:/...@champion")` and `mlflow models serve` answer windows with
the numbers the inference service's POST /predict gives for them.

Real processes on the session stack: the GRU and Prophet trainers and the evaluator consume their
own topics, the evaluator registers under a prefix of its own; the inference app runs in-process
and follows pointers written to a bucket of this module.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow.pyfunc
import numpy as np
import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flts_cli.stack import StackConfig, free_port
from inference_container.app import create_app
from inference_container.settings import InferenceSettings
from shared.data import KPI_COLUMNS
from shared.events import ModelType
from shared.kafka import EventProducer, ensure_topics
from shared.mlflow_utils import find_runs
from shared.model_runtime.pyfunc import HORIZON_PARAM, TIME_COLUMN
from shared.storage import ObjectStore
from tests.helpers.processes import ServiceProcess
from tests.helpers.waiting import WaitTimedOut, wait_until
from tests.integration.test_evaluator import EvaluatorProcess, evaluator_env, make_topics
from tests.integration.test_inference_support import load_test_split, pointer_to, window_body, window_frame_of
from tests.integration.test_trainers import isolated, write_processed

# prophet's own pandas calls warn about deprecations; nothing this project can change
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:prophet.*")

TYPES = (ModelType.GRU, ModelType.PROPHET)
IDENTIFIER = "PobleSec"  # what write_processed's claims carry
# (first row, horizon): windows of the sampled test split's rows, one step and several.
WINDOWS = ((0, 1), (37, 5), (90, 12))
PIPELINE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Champion:
    registered_model: str
    run_id: str
    model_type: ModelType
    run_ids: dict[ModelType, str]  # every trained type's run


def _trainer(model_type: ModelType, env: dict[str, str], suffix: str, log_path: Path) -> ServiceProcess:
    module = "nonml_container" if model_type is ModelType.PROPHET else "train_container"
    own = {**env, "KAFKA_GROUP_ID": f"trainer-{model_type.value.lower()}-{suffix}"}
    if model_type is not ModelType.PROPHET:
        own["MODEL_TYPE"] = model_type.value
    return ServiceProcess(module, own, log_path, name=f"trainer-{model_type.value}")


@pytest.fixture(scope="module")
def champion(
    stack: StackConfig,
    service_env: dict[str, str],
    object_store: ObjectStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Champion]:
    """One training claim through real trainers and the evaluator, until the alias is set."""
    names = isolated(stack, service_env, object_store)
    topics = make_topics(stack, object_store)
    prefix = f"flts-{names.suffix}-"
    logs = tmp_path_factory.mktemp("champion-logs")
    trainer_env = {
        **names.env,
        "EPOCHS": "2",
        "HIDDEN_SIZE": "8",
        "PROPHET_WORKERS": "2",
        "PROPHET_CHANGEPOINTS": "3",
        "PROPHET_DAILY_FOURIER": "3",
        "PROPHET_WEEKLY_FOURIER": "1",
    }
    evaluator = EvaluatorProcess(
        evaluator_env(
            service_env,
            topics,
            TOPIC_MODEL_TRAINING=names.topic_events,
            EXPECTED_MODEL_TYPES=",".join(t.value for t in TYPES),
            # A sample this small need not beat persistence: the test is about the artifact.
            SKILL_GATE="false",
            REGISTERED_MODEL_PREFIX=prefix,
        ),
        logs / "evaluator.log",
    )
    processes = [_trainer(t, trainer_env, names.suffix, logs / f"{t.value}.log") for t in TYPES]
    try:
        evaluator.start_ready()
        for process in processes:
            process.start()
        config_hash = uuid.uuid4().hex + uuid.uuid4().hex
        claim = write_processed(object_store, names.bucket, config_hash)
        EventProducer(stack.kafka_bootstrap, client_id="test-champion").publish(
            names.topic_claims, config_hash, claim
        )
        client = MlflowClient(stack.mlflow_url)
        name = f"{prefix}{IDENTIFIER}"

        found: list[Any] = []

        def alias_set() -> bool:
            try:
                found.append(client.get_model_version_by_alias(name, "champion"))
            except MlflowException:
                return False
            return True

        try:
            wait_until(alias_set, PIPELINE_TIMEOUT_S, f"the champion alias of {name}")
        except WaitTimedOut as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(p.tail() for p in (*processes, evaluator))) from None
        version = found[-1]
        run_ids = {t: find_runs(client, config_hash, t.value, ("FINISHED",))[0].info.run_id for t in TYPES}
        model_type = ModelType(version.tags["model_type"])
        assert version.run_id == run_ids[model_type]
        yield Champion(name, version.run_id, model_type, run_ids)
    finally:
        for process in (*processes, evaluator):
            process.stop()


@pytest.fixture(scope="module")
def serving(stack: StackConfig, object_store: ObjectStore) -> Iterator[tuple[TestClient, str]]:
    """The inference app, following the live pointer in a bucket of this module."""
    bucket = f"promotion-{uuid.uuid4().hex[:8]}"
    object_store.ensure_bucket(bucket)
    topic = f"model-selected-{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.kafka_bootstrap, [topic])
    env: dict[str, Any] = {
        **stack.service_env(),
        "IDENTIFIERS": IDENTIFIER,
        "BUCKET_PROMOTION": bucket,
        "TOPIC_MODEL_SELECTED": topic,
        "POINTER_POLL_S": "0.5",
        "INFERENCE_LOG_ENABLED": "false",
    }
    settings = InferenceSettings(**env)
    with TestClient(create_app(settings)) as client:
        yield client, bucket


def _serve(serving: tuple[TestClient, str], store: ObjectStore, run_id: str, model_type: ModelType) -> None:
    client, bucket = serving
    pointer = pointer_to(IDENTIFIER, run_id, model_type)
    store.put_json(bucket, f"{IDENTIFIER}/current.json", pointer.model_dump(mode="json"))

    def serves_it() -> bool:
        response = client.get("/readyz")
        return response.status_code == 200 and bool(response.json()["run_id"] == run_id)

    wait_until(serves_it, 60, f"the inference app to serve run {run_id}")


def _predict(client: TestClient, body: dict[str, Any]) -> np.ndarray:
    response = client.post(
        "/predict", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    return np.array([[p[k] for k in KPI_COLUMNS] for p in response.json()["predictions"]])


# /predict evaluates stations through stacks (shared.model_runtime.stacking: the recurrent cell by
# hand with batched products), the MLflow model through the network itself: the same arithmetic,
# equal to float32 rounding, not bit for bit.
STACKED_RTOL = 1e-6


def _same_as_predict(client: TestClient, answer: Any, start: int, horizon: int) -> None:
    """`answer` (a forecast frame of the MLflow model) equals POST /predict's for the window, to
    STACKED_RTOL."""
    split = load_test_split()
    expected = _predict(client, window_body(split, start, inference_length=horizon))
    frame = pd.DataFrame(answer)
    assert list(frame.columns) == [TIME_COLUMN, *KPI_COLUMNS]
    np.testing.assert_allclose(
        frame[list(KPI_COLUMNS)].to_numpy(dtype=np.float64), expected, rtol=STACKED_RTOL, atol=0
    )
    last = split.index[start + 9]
    steps = pd.to_datetime(frame[TIME_COLUMN]).to_numpy(dtype="datetime64[ns]")
    np.testing.assert_array_equal(
        steps, (last + pd.to_timedelta(np.arange(1, horizon + 1) * 120, "s")).values
    )


def _window(start: int) -> pd.DataFrame:
    return window_frame_of(load_test_split().iloc[start : start + 10])


def test_the_registry_champion_loads_as_pyfunc_and_answers_as_predict_serves_it(
    champion: Champion,
    serving: tuple[TestClient, str],
    object_store: ObjectStore,
    monkeypatch_stack_env: StackConfig,  # MLFLOW_TRACKING_URI and the S3 settings, as a user sets them
) -> None:
    _serve(serving, object_store, champion.run_id, champion.model_type)
    model = mlflow.pyfunc.load_model(f"models:/{champion.registered_model}@champion")
    for start, horizon in WINDOWS:
        answer = model.predict(_window(start), params={HORIZON_PARAM: horizon})
        _same_as_predict(serving[0], answer, start, horizon)
    # No horizon given: one step, as /predict's default.
    assert len(model.predict(_window(0))) == 1


@pytest.mark.parametrize("model_type", TYPES, ids=[t.value for t in TYPES])
def test_every_trained_type_loads_from_its_run_as_pyfunc_and_answers_as_predict_serves_it(
    champion: Champion,
    serving: tuple[TestClient, str],
    object_store: ObjectStore,
    monkeypatch_stack_env: StackConfig,
    model_type: ModelType,
) -> None:
    run_id = champion.run_ids[model_type]
    _serve(serving, object_store, run_id, model_type)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/{model_type.value}")
    for start, horizon in WINDOWS:
        answer = model.predict(_window(start), params={HORIZON_PARAM: horizon})
        _same_as_predict(serving[0], answer, start, horizon)


def test_mlflow_models_serve_of_the_champion_answers_invocations_as_predict_does(
    champion: Champion,
    serving: tuple[TestClient, str],
    object_store: ObjectStore,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    _serve(serving, object_store, champion.run_id, champion.model_type)
    port = free_port()
    server = ServiceProcess(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{champion.registered_model}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        # mlflow starts `uvicorn` by name: the virtual environment's bin must be on PATH.
        {**service_env, "PATH": f"{Path(sys.executable).parent}:{service_env.get('PATH', '')}"},
        tmp_path / "mlflow-serve.log",
        # Away from the repository: the model must bring its own code.
        cwd=tmp_path,
        name="mlflow-serve",
    )
    url = f"http://127.0.0.1:{port}"

    def ping() -> bool:
        try:
            return httpx.get(f"{url}/ping", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        server.start().wait_until(ping, 120, "mlflow models serve to answer /ping")
        for start, horizon in WINDOWS:
            window = _window(start)
            window[TIME_COLUMN] = window[TIME_COLUMN].dt.strftime("%Y-%m-%dT%H:%M:%S")
            body = {
                "dataframe_split": window.to_dict(orient="split", index=False),
                "params": {HORIZON_PARAM: horizon},
            }
            response = httpx.post(f"{url}/invocations", json=body, timeout=30)
            assert response.status_code == 200, response.text
            # Another process: its torch may round a float32 network's sums differently in the last
            # bits (threads, kernels), so equal up to float32 precision rather than bit for bit.
            _same_as_predict(serving[0], response.json()["predictions"], start, horizon)
    finally:
        server.stop()
