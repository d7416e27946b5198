"""Prophet: JSON round trip without pickle, and scoring on exactly the recurrent models' rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, STEP, make_windows, time_features
from shared.metrics import evaluation_rows
from shared.prophet_model import (
    MANIFEST_FILE,
    ProphetForecaster,
    ProphetOptions,
    fit_one_kpi,
    load_prophet_forecaster,
    save_prophet_models,
)
from shared.training import frame_arrays

# prophet's own pandas calls warn about deprecations; nothing this project can change
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:prophet.*")

OPTIONS = ProphetOptions(n_changepoints=3, daily_fourier=3, weekly_fourier=1)


def daily_frame(rows: int, start: str) -> pd.DataFrame:
    index = pd.date_range(start, periods=rows, freq=STEP, name="time")
    minutes = (index.hour * 60 + index.minute).to_numpy(dtype=float)
    daily = 0.5 + 0.3 * np.sin(2 * np.pi * minutes / 1440.0)
    kpis = np.repeat(daily[:, None], len(KPI_COLUMNS), axis=1) + np.linspace(0, 0.1, len(KPI_COLUMNS))
    frame = pd.DataFrame(kpis, index=index, columns=list(KPI_COLUMNS))
    return pd.concat([frame, time_features(index).set_axis(index)], axis=1)[list(FEATURE_COLUMNS)]


@pytest.fixture(scope="module")
def fitted() -> dict[str, object]:
    from prophet.serialize import model_from_json

    train = daily_frame(1440, "2018-02-05")  # two days
    models = {}
    for kpi in KPI_COLUMNS:
        name, payload = fit_one_kpi(kpi, train.index.to_numpy(), train[kpi].to_numpy(), OPTIONS)
        models[name] = model_from_json(payload)
    return models


def test_prophet_is_scored_on_the_same_rows_as_the_recurrent_models(fitted: dict[str, object]) -> None:
    test = daily_frame(60, "2018-02-07")
    input_len = 10
    predictions = ProphetForecaster(fitted).predict(pd.DatetimeIndex(test.index[input_len:]))
    actual, _baseline = evaluation_rows(test[list(KPI_COLUMNS)].to_numpy(), input_len)
    features, targets = frame_arrays(test)
    _, recurrent_targets = make_windows(features, targets, input_len, 1)
    assert predictions.shape == actual.shape == (50, len(KPI_COLUMNS))
    np.testing.assert_allclose(recurrent_targets[:, 0, :], actual)
    # a clean daily cycle is learnt: Prophet tracks it far better than a constant would
    assert np.sqrt(np.mean((predictions - actual) ** 2)) < 0.05


def test_models_round_trip_through_json_files_without_pickle(
    fitted: dict[str, object], tmp_path: Path
) -> None:
    save_prophet_models(fitted, tmp_path / "PROPHET")
    manifest = json.loads((tmp_path / "PROPHET" / MANIFEST_FILE).read_text())
    assert manifest["columns"] == list(KPI_COLUMNS)
    assert not list((tmp_path / "PROPHET").glob("*.pkl"))
    timestamps = pd.date_range("2018-02-07", periods=20, freq=STEP)
    reloaded = load_prophet_forecaster(tmp_path / "PROPHET")
    np.testing.assert_allclose(reloaded.predict(timestamps), ProphetForecaster(fitted).predict(timestamps))


def test_forecaster_refuses_a_missing_kpi(fitted: dict[str, object]) -> None:
    partial = {k: v for k, v in fitted.items() if k != "up"}
    with pytest.raises(ValueError, match="up"):
        ProphetForecaster(partial)


def test_loading_a_folder_of_another_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"kind": "pickle", "files": {}}))
    with pytest.raises(ValueError, match="prophet-per-kpi"):
        load_prophet_forecaster(tmp_path)
