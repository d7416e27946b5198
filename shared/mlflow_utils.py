"""MLflow helpers: connection, experiments, finding runs by config hash, checking a run's artifacts."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import requests

from shared.columns import KPI_COLUMNS
from shared.kafka import TransientError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

# `mlflow` is imported inside the functions that talk to the server: importing it costs 2-3 s,
# which every `flts` command and every importer of `experiment_for` would otherwise pay.

EXPERIMENT_RECURRENT = "Default"
EXPERIMENT_NONML = "NonML"

# The files a run's model cannot load without, as shared.model_runtime.pyfunc.save_mlflow_model
# lays them out under the artifact path `<TYPE>`. Spelled out here rather than imported: the
# runtime modules that name them import torch, which the Prophet trainer and the evaluator lack.
_MODEL_DIR_FILES = ("MLmodel", "artifacts/scaler.json", "artifacts/preprocess_config.json")
_RECURRENT_FILES = ("model_spec.json", "state_dict.pt")  # shared.model_runtime.networks
_PROPHET_FILES = ("prophet_spec.json", *(f"{kpi}.json" for kpi in KPI_COLUMNS))  # ...prophet
_WEIGHT_FILES = {"GRU": _RECURRENT_FILES, "LSTM": _RECURRENT_FILES, "PROPHET": _PROPHET_FILES}


def configure_mlflow_client(timeout_s: int = 20, max_retries: int = 1) -> None:
    """Keep each MLflow HTTP call short and switch off MLflow's usage telemetry.

    MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) would hold one call for
    minutes; our own bounded retry decides when to give up. Telemetry tries to reach the
    internet and, with no route out, holds every process's exit for ~20 s. Artifact progress
    bars are terminal output that would land between the JSON log lines. These are MLflow's
    own variables, set once at start-up unless the deployment already chose values.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.telemetry.client import set_telemetry_client

    # mlflow set its telemetry client up when it was imported; this re-reads the variable.
    # mlflow declares no return type on this function, so a strict checker sees it as untyped.
    set_telemetry_client()  # type: ignore[no-untyped-call]


def mlflow_unreachable(exc: BaseException) -> bool:
    """The one classification of MLflow errors: True when `exc` is worth retrying.

    That is: the tracking server could not be reached, timed out, or answered with a gateway
    status. Anything else (a refused request, an unknown run) is an answer and will not change.
    """
    if isinstance(exc, ConnectionError | TimeoutError | requests.ConnectionError | requests.Timeout):
        return True
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        # A generic MlflowException says INTERNAL_ERROR even for our own bad calls, so only the
        # transport's own words (and gateway statuses) count as "unreachable".
        if exc.error_code == "TEMPORARILY_UNAVAILABLE":
            return True
        text = str(exc)
        return any(
            marker in text
            for marker in (
                "Max retries exceeded",
                "Connection refused",
                "ConnectionError",
                "timed out",
                "error code 502",
                "error code 503",
                "error code 504",
            )
        )
    return False


def experiment_for(model_type: str) -> str:
    return EXPERIMENT_NONML if model_type == "PROPHET" else EXPERIMENT_RECURRENT


def connect(tracking_uri: str) -> MlflowClient:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def mlflow_answers(tracking_uri: str, timeout_s: float = 3.0) -> bool:
    """True when a real API route answers (`/health` can say 200 while the API refuses)."""
    url = f"{tracking_uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status: int = response.status
            return status == 200
    except urllib.error.HTTPError as exc:
        # 404 RESOURCE_DOES_NOT_EXIST still proves the API is serving.
        return exc.code == 404
    except (urllib.error.URLError, OSError):
        return False


def wait_for_mlflow(tracking_uri: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if mlflow_answers(tracking_uri):
            return
        time.sleep(0.5)
    raise TransientError(f"MLflow at {tracking_uri} did not answer within {timeout_s:.0f}s")


def ensure_experiment(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        # Another service created it between our look-up and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_runs(
    client: MlflowClient,
    config_hash: str,
    model_type: str | None = None,
    statuses: tuple[str, ...] = ("FINISHED",),
) -> list[Run]:
    """Runs tagged with `config_hash` (and `model_type`), newest first."""
    names = [EXPERIMENT_RECURRENT, EXPERIMENT_NONML]
    ids = [e.experiment_id for n in names if (e := client.get_experiment_by_name(n)) is not None]
    if not ids:
        return []
    clauses = [f"tags.config_hash = '{config_hash}'"]
    if model_type is not None:
        clauses.append(f"tags.model_type = '{model_type}'")
    runs = client.search_runs(
        experiment_ids=ids,
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    return [r for r in runs if r.info.status in statuses]


def required_model_artifacts(model_type: str) -> tuple[str, ...]:
    """Artifact paths, relative to a run's artifact root, that a `model_type` run must hold for
    its model to load: `<TYPE>/MLmodel`, the scaler and preprocess config, and the weights.
    ValueError for a model type FLTS does not train."""
    weights = _WEIGHT_FILES.get(model_type)
    if weights is None:
        raise ValueError(f"unknown model type {model_type!r}; expected one of {', '.join(_WEIGHT_FILES)}")
    return (
        *(f"{model_type}/{name}" for name in _MODEL_DIR_FILES),
        *(f"{model_type}/artifacts/model/{name}" for name in weights),
    )


def missing_model_artifacts(client: MlflowClient, run_id: str, model_type: str) -> list[str]:
    """The required model artifacts (`required_model_artifacts`) that run `run_id` lacks in the
    object store, in that order; [] when its model can be loaded. An empty object counts as
    missing: no model file is empty, and an interrupted upload can leave one.

    Lists the run's artifact folders through the MLflow server (one call per folder, nothing is
    downloaded), so it answers what the store holds now, not what MLflow's metadata remembers.
    Errors of the MLflow client propagate (wrap the call in your bounded retry)."""
    required = required_model_artifacts(model_type)
    present: dict[str, int | None] = {}
    for folder in sorted({path.rsplit("/", 1)[0] for path in required}):
        for item in client.list_artifacts(run_id, folder):
            if not item.is_dir:
                present[item.path] = item.file_size
    return [path for path in required if path not in present or present[path] == 0]


def describe_missing_artifacts(run_id: str, missing: list[str]) -> str:
    """One sentence naming what a run lacks, for logs, events and error messages."""
    return (
        f"run {run_id} lacks its model artifacts {', '.join(missing)} in the object store "
        f"(MLflow still lists the run, but its files are gone)"
    )
