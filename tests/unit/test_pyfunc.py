"""shared.model_runtime.pyfunc: every model type as an MLflow pyfunc built from code, answering a
window DataFrame and `inference_length` with the runtime's own numbers, refusing malformed windows
with a message that names the problem."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

from shared.data import KPI_COLUMNS, MinMaxScaler
from shared.model_runtime.networks import ModelSpec, build_model, save_model
from shared.model_runtime.prophet import WindowCorrection, save_prophet_models
from shared.model_runtime.pyfunc import (
    HORIZON_PARAM,
    TIME_COLUMN,
    MalformedWindow,
    load_window_model,
    save_mlflow_model,
    window_frame,
)
from shared.model_runtime.recurrent import RecurrentForecast
from tests.unit.test_prophet_model import INPUT_LEN, STEP64, fitted, unit_scaler  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
# prophet's own pandas calls warn about deprecations; nothing this project can change
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:prophet.*")


def _scaler() -> MinMaxScaler:
    return MinMaxScaler(KPI_COLUMNS, tuple([0.0] * len(KPI_COLUMNS)), tuple([100.0] * len(KPI_COLUMNS)))


def _window(rows: int = INPUT_LEN, start: str = "2018-03-01 10:00", level: float = 40.0) -> pd.DataFrame:
    timestamps = pd.date_range(start, periods=rows, freq="120s").to_numpy()
    kpis = level + np.arange(rows * len(KPI_COLUMNS), dtype=np.float64).reshape(rows, -1) % 7
    return window_frame(timestamps, kpis)


@pytest.fixture(scope="module")
def gru_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    network = build_model(ModelSpec("GRU", hidden_size=8, input_seq_len=INPUT_LEN)).eval()
    with torch.no_grad():  # a network that is not persistence, so the numbers say something
        network.head.bias.normal_(0.0, 0.5)
    path = tmp_path_factory.mktemp("gru") / "GRU"
    save_mlflow_model(
        path,
        model_type="GRU",
        input_seq_len=INPUT_LEN,
        save_model=lambda directory: save_model(network, directory),
        scaler=_scaler(),
        meta={"step_seconds": 120, "identifier": "unit"},
        input_example=_window(),
    )
    return path


@pytest.fixture(scope="module")
def gru(gru_dir: Path) -> Any:
    return mlflow.pyfunc.load_model(str(gru_dir))


def test_the_signature_is_a_window_in_and_the_forecast_out_with_inference_length_defaulting_to_1(
    gru: Any, gru_dir: Path
) -> None:
    signature = gru.metadata.signature
    expected = [TIME_COLUMN, *KPI_COLUMNS]
    assert signature.inputs.input_names() == expected
    assert signature.outputs.input_names() == expected
    assert [(p.name, p.default) for p in signature.params.params] == [(HORIZON_PARAM, 1)]
    assert (gru_dir / "input_example.json").exists()
    requirements = (gru_dir / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} == {"mlflow-skinny", "numpy", "pandas", "torch"}
    assert all("==" in r for r in requirements)
    assert not list(gru_dir.rglob("*.pkl")), "nothing is pickled"


def test_the_pyfunc_answers_with_the_runtimes_numbers_for_any_horizon(gru: Any, gru_dir: Path) -> None:
    window = _window(rows=14)
    direct = load_window_model(gru_dir)
    assert isinstance(direct.forecast, RecurrentForecast)
    timestamps = window[TIME_COLUMN].to_numpy()
    kpis = window[list(KPI_COLUMNS)].to_numpy()
    one = gru.predict(window)
    assert list(one.columns) == [TIME_COLUMN, *KPI_COLUMNS] and len(one) == 1
    for horizon in (1, 4):
        answer = gru.predict(window, params={HORIZON_PARAM: horizon})
        np.testing.assert_array_equal(
            answer[list(KPI_COLUMNS)].to_numpy(), direct.forecast.predict(timestamps, kpis, horizon)
        )
        expected_times = timestamps[-1] + np.arange(1, horizon + 1) * np.timedelta64(120, "s")
        np.testing.assert_array_equal(answer[TIME_COLUMN].to_numpy(), expected_times)
    np.testing.assert_array_equal(
        one.to_numpy(), gru.predict(window, params={HORIZON_PARAM: 4})[:1].to_numpy()
    )


def _shifted(frame: pd.DataFrame, row: int, by: str) -> pd.DataFrame:
    changed = frame.copy()
    changed.loc[row, TIME_COLUMN] = changed.loc[row, TIME_COLUMN] + pd.Timedelta(by)
    return changed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w: w.iloc[:5], "too few rows: the model needs at least 10 rows, got 5"),
        (lambda w: w.assign(down=np.nan), "column 'down' row 0: value is not finite"),
        (lambda w: w.assign(up=-1.0), "column 'up' row 0: -1 is outside the plausible range"),
        (lambda w: _shifted(w, 3, "-240s"), "'time' rows 2 and 3 are duplicate or out of order"),
        (lambda w: _shifted(w, 9, "60s"), "must be 120 s apart (the training step); rows 8 and 9 are 180 s"),
    ],
    ids=["short", "nan", "negative", "unordered", "wrong-step"],
)
def test_a_malformed_window_is_refused_with_the_problem_named(gru: Any, change: Any, message: str) -> None:
    with pytest.raises(MalformedWindow, match=message.replace("(", r"\(").replace(")", r"\)")):
        gru.predict(change(_window()))


def test_a_missing_column_or_a_bad_horizon_is_refused_with_the_problem_named(gru: Any) -> None:
    with pytest.raises(MlflowException, match="rb_up_var"):
        gru.predict(_window().drop(columns=["rb_up_var"]))
    for horizon in (0, -2):
        with pytest.raises(
            MalformedWindow, match=f"inference_length must be an integer of at least 1, got {horizon}"
        ):
            gru.predict(_window(), params={HORIZON_PARAM: horizon})


def test_saving_a_model_takes_well_under_three_seconds(tmp_path: Path) -> None:
    network = build_model(ModelSpec("LSTM", hidden_size=8, input_seq_len=INPUT_LEN)).eval()
    started = time.perf_counter()
    save_mlflow_model(
        tmp_path / "LSTM",
        model_type="LSTM",
        input_seq_len=INPUT_LEN,
        save_model=lambda directory: save_model(network, directory),
        scaler=_scaler(),
        meta={"step_seconds": 120},
        input_example=_window(),
    )
    assert time.perf_counter() - started < 3.0


def test_a_prophet_pyfunc_loads_and_answers_without_importing_torch(
    fitted: dict[str, object],  # noqa: F811
    tmp_path: Path,
) -> None:
    correction = WindowCorrection.last_value(len(KPI_COLUMNS), INPUT_LEN)
    path = tmp_path / "PROPHET"
    save_mlflow_model(
        path,
        model_type="PROPHET",
        input_seq_len=INPUT_LEN,
        save_model=lambda directory: save_prophet_models(fitted, correction, directory),
        scaler=unit_scaler(),
        meta={"step_seconds": 120},
        input_example=_window(start="2018-02-07 00:00", level=0.5),
    )
    assert "prophet==" in (path / "requirements.txt").read_text()
    assert "torch" not in (path / "requirements.txt").read_text()
    window = _window(start="2018-02-07 00:00", level=0.5)
    window.to_parquet(tmp_path / "window.parquet")
    script = f"""
import json, sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model({str(path)!r})
window = pd.read_parquet({str(tmp_path / "window.parquet")!r})
answer = model.predict(window, params={{"inference_length": 3}})
assert "torch" not in sys.modules, "loading a Prophet model imported torch"
print(json.dumps(answer.drop(columns=["time"]).to_numpy().tolist()))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    served = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    direct = load_window_model(path).forecast
    expected = direct.predict(window[TIME_COLUMN].to_numpy(), window[list(KPI_COLUMNS)].to_numpy(), 3)
    np.testing.assert_allclose(served, expected, rtol=1e-12)
