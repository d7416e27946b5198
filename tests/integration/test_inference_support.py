"""Helpers for the inference tests (no tests here): a small real model logged to the session
MLflow server, pointers written to the promotion bucket, real windows from the test split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from flts_cli.stack import StackConfig
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, MinMaxScaler, time_features
from shared.events import ModelType, PromotionPointer
from shared.mlflow_utils import ensure_experiment
from shared.model_runtime.networks import ModelSpec, RecurrentNetwork, build_model, save_model
from shared.model_runtime.pyfunc import save_mlflow_model, window_frame
from shared.storage import ObjectStore

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    model: RecurrentNetwork
    scaler: MinMaxScaler
    config_hash: str
    model_type: str


def load_test_split(dataset: str = "PobleSec") -> pd.DataFrame:
    frame = pd.read_csv(DATA_DIR / f"{dataset}_test.csv", parse_dates=["time"], index_col="time")
    return frame[list(KPI_COLUMNS)].astype(float)


def window_body(frame: pd.DataFrame, start: int, rows: int = 10, inference_length: int = 1) -> dict[str, Any]:
    part = frame.iloc[start : start + rows]
    data: dict[str, Any] = {"ts": [t.strftime("%Y-%m-%d %H:%M:%S") for t in part.index]}
    for name in KPI_COLUMNS:
        data[name] = part[name].tolist()
    return {"data": data, "inference_length": inference_length}


def window_frame_of(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of a split (time index, KPI columns) as the MLflow model's input: `time` and the KPIs."""
    return window_frame(frame.index.to_numpy(dtype="datetime64[ns]"), frame[list(KPI_COLUMNS)].to_numpy())


def direct_prediction(logged: LoggedModel, frame: pd.DataFrame) -> np.ndarray:
    """The training-time path on one window: scaler, pandas time features, one forward pass."""
    scaled = logged.scaler.transform(frame[list(KPI_COLUMNS)])
    features = scaled.join(time_features(frame.index))[list(FEATURE_COLUMNS)]
    x = torch.tensor(features.to_numpy(dtype=np.float32)[None])
    with torch.no_grad():
        y = logged.model(x)[0].numpy().astype(np.float64)
    return logged.scaler.inverse_array(y)


def log_model_run(
    stack: StackConfig,
    tmp_path: Path,
    *,
    identifier: str,
    model_type: str = "GRU",
    seed: int = 0,
) -> LoggedModel:
    """A real MLflow run with the trainer's layout: the MLflow model at <TYPE>/ (weights, scaler and
    preprocess config inside it)."""
    torch.manual_seed(seed)
    model = build_model(ModelSpec(model_type, hidden_size=16, input_seq_len=10, output_seq_len=1)).eval()
    train = pd.read_csv(DATA_DIR / "PobleSec.csv", usecols=list(KPI_COLUMNS))
    scaler = MinMaxScaler.fit(train)
    config_hash = hashlib.sha256(f"{identifier}-{seed}-{model_type}".encode()).hexdigest()
    meta = {
        "config_hash": config_hash,
        "dataset": "PobleSec",
        "identifier": identifier,
        "config": {"salt": identifier},
        "columns": list(FEATURE_COLUMNS),
        "rows": {"train": len(train), "test": 3982},
        "scaler": scaler.to_dict(),
        "step_seconds": 120,
    }
    root = tmp_path / f"artifacts-{seed}-{model_type}"
    save_mlflow_model(
        root / model_type,
        model_type=model_type,
        input_seq_len=10,
        save_model=lambda directory: save_model(model, directory),
        scaler=scaler,
        meta=meta,
        input_example=window_frame_of(load_test_split().iloc[:10]),
    )
    client = MlflowClient(tracking_uri=stack.mlflow_url)
    experiment_id = ensure_experiment(client, "Default")
    run = client.create_run(
        experiment_id,
        run_name=model_type,
        tags={"config_hash": config_hash, "model_type": model_type, "identifier": identifier},
    )
    run_id = run.info.run_id
    client.log_param(run_id, "input_sequence_length", 10)
    client.log_artifacts(run_id, str(root / model_type), model_type)
    client.set_terminated(run_id)
    return LoggedModel(run_id, model, scaler, config_hash, model_type)


def make_pointer(logged: LoggedModel, identifier: str, age_s: float = 0.0) -> PromotionPointer:
    return pointer_to(
        identifier,
        logged.run_id,
        ModelType(logged.model_type),
        config_hash=logged.config_hash,
        timestamp=datetime.now(UTC) - timedelta(seconds=age_s),
    )


def pointer_to(
    identifier: str,
    run_id: str,
    model_type: ModelType,
    *,
    config_hash: str = "0" * 64,
    timestamp: datetime | None = None,
) -> PromotionPointer:
    """A promotion pointer to `run_id`'s model, with placeholder scores."""
    return PromotionPointer(
        identifier=identifier,
        config_hash=config_hash,
        run_id=run_id,
        model_type=model_type,
        experiment="NonML" if model_type is ModelType.PROPHET else "Default",
        model_uri=f"runs:/{run_id}/{model_type.value}",
        rmse=0.1,
        mae=0.05,
        mse=0.01,
        score=0.077,
        weights={"rmse": 0.5, "mae": 0.3, "mse": 0.2},
        scoreboard=[],
        timestamp=timestamp or datetime.now(UTC),
    )


def write_pointer(store: ObjectStore, pointer: PromotionPointer, bucket: str = "model-promotion") -> None:
    store.put_json(bucket, f"{pointer.identifier}/current.json", pointer.model_dump(mode="json"))
