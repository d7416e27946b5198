"""Every FLTS model as an MLflow Model: pyfunc flavour, built "from code", no pickled objects.

The MLflow model directory a trainer logs (artifact path `<TYPE>` of its run) holds:
- `MLmodel` with the signature (a window: `time` plus the 11 KPIs; the parameter
  `inference_length`, default 1), the model's config (`model_type`, `input_seq_len`) and the
  artifact paths below; `input_example.json`, `requirements.txt` with pinned versions;
- `artifacts/model/`: the runtime's own stored form (GRU/LSTM: JSON spec plus a weights-only state
  dict; Prophet: per-KPI Prophet JSON plus the manifest with the window correction);
- `artifacts/scaler.json` (the train-fit scaler) and `artifacts/preprocess_config.json` (the
  processed data's metadata, with `step_seconds`);
- `code/shared/`: this runtime's code, so the model loads wherever MLflow can run it;
- `mlflow_model.py`: the file MLflow executes to build the model (`set_model(WindowForecaster())`).

`WindowForecaster.predict` checks a window as the inference service's POST /predict does and
answers with the same runtime (`Forecast.predict`), so both give the same numbers. The inference
service reads the same directory with `load_window_model`, without going through pyfunc.

torch and prophet are imported only when a model of their kind is loaded or saved: a Prophet model
must load (and the Prophet trainer must run) where torch is not installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from shared.data import KPI_COLUMNS, STEP, MinMaxScaler
from shared.model_runtime.forecasting import Forecast, future_timestamps
from shared.model_runtime.ranges import PLAUSIBLE_SPAN_FACTOR, KpiRanges

TIME_COLUMN = "time"
HORIZON_PARAM = "inference_length"
DEFAULT_HORIZON = 1
PROPHET = "PROPHET"
# Names of the artifacts inside the MLflow model directory (MLflow keeps each under artifacts/).
MODEL_ARTIFACT = "model"
SCALER_ARTIFACT = "scaler"
PREPROCESS_ARTIFACT = "preprocess"
SCALER_FILE = "scaler.json"
PREPROCESS_FILE = "preprocess_config.json"
# The file MLflow runs to build the model ("models from code"), and the code it needs.
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
_SHARED = Path(__file__).resolve().parents[1]
_RUNTIME_CODE = ("__init__.py", "data.py", "model_runtime")
# What loading needs beyond the runtime's own library (torch or prophet): mlflow-skinny carries
# pyfunc and the scoring server; the full mlflow distribution is not needed to load or serve.
_BASE_REQUIREMENTS = ("mlflow-skinny", "numpy", "pandas")
_LIBRARY = {PROPHET: "prophet", "GRU": "torch", "LSTM": "torch"}


class MalformedWindow(ValueError):
    """A window or horizon the model cannot answer; the message names the problem."""


def model_signature() -> ModelSignature:
    """A window of the 11 KPIs with its timestamps in, the forecast of `inference_length` rows out."""
    columns = Schema(
        [ColSpec(DataType.datetime, TIME_COLUMN), *(ColSpec(DataType.double, k) for k in KPI_COLUMNS)]
    )
    params = ParamSchema([ParamSpec(HORIZON_PARAM, DataType.long, DEFAULT_HORIZON)])
    return ModelSignature(inputs=columns, outputs=columns, params=params)


def pip_requirements(model_type: str) -> list[str]:
    """Pinned to the versions installed here, read from the distributions (no inference: fast)."""
    names = (*_BASE_REQUIREMENTS, _LIBRARY[model_type])
    # A local version label (torch's "+cpu") names a build on another index, not a PyPI release.
    return [f"{name}=={importlib.metadata.version(name).split('+', 1)[0]}" for name in names]


@dataclass(frozen=True)
class WindowModel:
    """A stored model loaded for serving: its forecast and what a window is checked against."""

    model_type: str
    forecast: Forecast
    scaler: MinMaxScaler
    meta: dict[str, Any]
    output_seq_len: int

    @property
    def input_seq_len(self) -> int:
        return self.forecast.input_seq_len

    @property
    def step(self) -> np.timedelta64:
        return self.forecast.step

    @property
    def ranges(self) -> KpiRanges:
        return KpiRanges.from_scaler(self.scaler)


def build_window_model(config: Mapping[str, Any], artifacts: Mapping[str, Path]) -> WindowModel:
    """The model from its config (`model_type`, `input_seq_len`) and artifact paths by name."""
    model_type = str(config["model_type"])
    scaler = MinMaxScaler.from_dict(json.loads(Path(artifacts[SCALER_ARTIFACT]).read_text()))
    meta = json.loads(Path(artifacts[PREPROCESS_ARTIFACT]).read_text())
    step = np.timedelta64(int(meta.get("step_seconds", STEP.total_seconds())), "s")
    model_dir = Path(artifacts[MODEL_ARTIFACT])
    forecast: Forecast
    if model_type == PROPHET:
        # Imported here: prophet is needed only by a Prophet model, and is slow to import.
        from shared.model_runtime.prophet import load_prophet_forecast

        forecast = load_prophet_forecast(model_dir, scaler, int(config["input_seq_len"]), step)
        output_len = 1
    else:
        # Imported here: torch is needed only by a recurrent model, and a Prophet one must load without it.
        from shared.model_runtime.networks import load_model
        from shared.model_runtime.recurrent import RecurrentForecast

        network = load_model(model_dir)
        output_len = network.spec.output_seq_len
        forecast = RecurrentForecast(network, scaler, network.spec.input_seq_len, output_len, step)
    return WindowModel(model_type, forecast, scaler, meta, output_len)


def load_window_model(model_dir: Path) -> WindowModel:
    """The model of a downloaded MLflow model directory, read directly (no pyfunc machinery)."""
    flavor = Model.load(str(model_dir)).flavors.get(mlflow.pyfunc.FLAVOR_NAME)
    if flavor is None or "artifacts" not in flavor or "config" not in flavor:
        raise ValueError(f"{model_dir} is not an FLTS MLflow model (no pyfunc artifacts and config)")
    artifacts = {name: Path(model_dir) / spec["path"] for name, spec in flavor["artifacts"].items()}
    return build_window_model(flavor["config"], artifacts)


def window_arrays(frame: pd.DataFrame, model: WindowModel) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps datetime64[ns], KPIs (n, 11) float64) of a window, checked as POST /predict
    checks one: every KPI present, numeric and finite, within the model's plausible range, at
    least `input_seq_len` rows, timestamps ordered at the training step. MalformedWindow if not."""
    if not isinstance(frame, pd.DataFrame):
        raise MalformedWindow(
            f"a window is a DataFrame of {TIME_COLUMN} and the KPIs, got {type(frame).__name__}"
        )
    missing = [c for c in (TIME_COLUMN, *KPI_COLUMNS) if c not in frame.columns]
    if missing:
        raise MalformedWindow(f"the window lacks the columns {', '.join(missing)}")
    rows = len(frame)
    if rows < model.input_seq_len:
        raise MalformedWindow(
            f"too few rows: the model needs at least {model.input_seq_len} rows, got {rows}"
        )
    try:
        kpis = frame.loc[:, list(KPI_COLUMNS)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MalformedWindow(f"the KPI columns must be numbers: {exc}") from None
    if not np.isfinite(kpis).all():
        row, col = np.argwhere(~np.isfinite(kpis))[0]
        raise MalformedWindow(f"column '{KPI_COLUMNS[col]}' row {row}: value is not finite")
    found = model.ranges.violations(kpis)
    if found:
        raise MalformedWindow(
            "KPI values outside the plausible range of the model (never negative, at most the training "
            f"maximum plus {PLAUSIBLE_SPAN_FACTOR:g} training ranges): "
            + "; ".join(violation.describe() for violation in found)
        )
    return _timestamps(frame[TIME_COLUMN], model.step), kpis


def _timestamps(column: pd.Series, step: np.timedelta64) -> np.ndarray:
    try:
        times = pd.to_datetime(column)
    except (TypeError, ValueError) as exc:
        raise MalformedWindow(f"column '{TIME_COLUMN}' must hold timestamps: {exc}") from None
    if times.isna().any():
        raise MalformedWindow(f"column '{TIME_COLUMN}' row {int(np.flatnonzero(times.isna())[0])} is empty")
    if times.dt.tz is not None:
        # As POST /predict: an offset is honoured, the model works in UTC-naive time.
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    stamps: np.ndarray = times.to_numpy(dtype="datetime64[ns]")
    gaps = np.diff(stamps)
    bad = np.flatnonzero(gaps != step)
    if bad.size:
        i = int(bad[0])
        if gaps[i] <= np.timedelta64(0, "ns"):
            raise MalformedWindow(f"'{TIME_COLUMN}' rows {i} and {i + 1} are duplicate or out of order")
        step_s = step / np.timedelta64(1, "s")
        raise MalformedWindow(
            f"'{TIME_COLUMN}' must be {step_s:g} s apart (the training step); rows {i} and {i + 1} are "
            f"{gaps[i] / np.timedelta64(1, 's'):g} s apart"
        )
    return stamps


def horizon_of(params: Mapping[str, Any] | None) -> int:
    """`inference_length` from the predict params (default 1); MalformedWindow unless an int >= 1."""
    value = (params or {}).get(HORIZON_PARAM, DEFAULT_HORIZON)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise MalformedWindow(f"{HORIZON_PARAM} must be an integer of at least 1, got {value!r}")
    return int(value)


def window_frame(timestamps: np.ndarray, kpis: np.ndarray) -> pd.DataFrame:
    """A window (or forecast) as the model's DataFrame: `time` and the 11 KPIs in original units."""
    frame = pd.DataFrame(np.asarray(kpis, dtype=np.float64), columns=list(KPI_COLUMNS))
    frame.insert(0, TIME_COLUMN, np.asarray(timestamps, dtype="datetime64[ns]"))
    return frame


class WindowForecaster(PythonModel):
    """The pyfunc: a window DataFrame and `inference_length` in, the forecast DataFrame out."""

    def __init__(self) -> None:
        self._model: WindowModel | None = None

    def load_context(self, context: PythonModelContext) -> None:
        artifacts = {name: Path(path) for name, path in context.artifacts.items()}
        self._model = build_window_model(context.model_config, artifacts)

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        model = self._model
        if model is None:
            raise RuntimeError("the model is not loaded (load it with mlflow.pyfunc.load_model)")
        horizon = horizon_of(params)
        timestamps, kpis = window_arrays(model_input, model)
        values = model.forecast.predict(timestamps, kpis, horizon)
        if not np.isfinite(values).all():
            raise MalformedWindow(
                "the forecast is not finite for these values; are the KPIs in original units?"
            )
        return window_frame(future_timestamps(timestamps[-1], model.step, len(values)), values)


def save_mlflow_model(
    path: Path,
    *,
    model_type: str,
    input_seq_len: int,
    save_model: Callable[[Path], None],
    scaler: MinMaxScaler,
    meta: Mapping[str, Any],
    input_example: pd.DataFrame,
) -> None:
    """Write the MLflow model directory at `path` (absent or empty). `save_model(directory)` writes
    the runtime's stored form (the trainer's FitOutcome.save_model); `input_example` is a window."""
    with tempfile.TemporaryDirectory(prefix="flts-mlflow-model-") as tmp:
        staging = Path(tmp)
        save_model(staging / MODEL_ARTIFACT)
        (staging / SCALER_FILE).write_text(json.dumps(scaler.to_dict(), indent=2, sort_keys=True))
        (staging / PREPROCESS_FILE).write_text(json.dumps(dict(meta), indent=2, sort_keys=True, default=str))
        code = staging / "code" / "shared"
        code.mkdir(parents=True)
        # Only the runtime's modules travel with the model: the rest of shared/ needs Kafka, S3, ...
        for name in _RUNTIME_CODE:
            source = _SHARED / name
            if source.is_dir():
                shutil.copytree(source, code / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, code / name)
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(MODEL_CODE),
            artifacts={
                MODEL_ARTIFACT: str(staging / MODEL_ARTIFACT),
                SCALER_ARTIFACT: str(staging / SCALER_FILE),
                PREPROCESS_ARTIFACT: str(staging / PREPROCESS_FILE),
            },
            model_config={"model_type": model_type, "input_seq_len": int(input_seq_len)},
            code_paths=[str(code)],
            signature=model_signature(),
            input_example=(input_example, {HORIZON_PARAM: DEFAULT_HORIZON}),
            pip_requirements=pip_requirements(model_type),
        )
