"""Prophet: JSON round trip without pickle, and scoring on exactly the recurrent models' rows."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nonml_container.fitting import ProphetStopped, fit_frame, fit_one_kpi, fit_prophet_models
from nonml_container.settings import ProphetHyperparameters
from shared.accuracy import evaluation_rows
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, STEP, make_windows, time_features
from shared.model_runtime.prophet import (
    MANIFEST_FILE,
    ProphetForecaster,
    load_prophet_forecaster,
    save_prophet_models,
)
from train_container.training import frame_arrays

# prophet's own pandas calls warn about deprecations; nothing this project can change
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:prophet.*")

OPTIONS = ProphetHyperparameters(PROPHET_CHANGEPOINTS=3, PROPHET_DAILY_FOURIER=3, PROPHET_WEEKLY_FOURIER=1)


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
    models: dict[str, object] = {}
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


def test_bucket_means_are_stamped_at_the_bucket_centre_so_the_daily_phase_is_kept() -> None:
    index = pd.date_range("2018-02-05 00:00", periods=10, freq=STEP)
    frame = fit_frame(index.to_numpy(), np.arange(10, dtype=float), resample_minutes=10)
    # rows 00:00..00:08 average to 2.0 and describe 00:04; rows 00:10..00:18 describe 00:14
    assert list(frame["ds"]) == [pd.Timestamp("2018-02-05 00:04"), pd.Timestamp("2018-02-05 00:14")]
    np.testing.assert_allclose(frame["y"], [2.0, 7.0])


def test_gaps_leave_no_invented_buckets_and_zero_minutes_fits_the_raw_rows() -> None:
    index = pd.date_range("2018-02-05", periods=5, freq=STEP).append(
        pd.date_range("2018-02-05 01:00", periods=5, freq=STEP)
    )
    y = np.linspace(0.0, 1.0, len(index))
    resampled = fit_frame(index.to_numpy(), y, resample_minutes=10)
    assert len(resampled) == 2 and np.all(np.isfinite(resampled["y"]))
    raw = fit_frame(index.to_numpy(), y, resample_minutes=0)
    assert list(raw["ds"]) == list(index)
    np.testing.assert_allclose(raw["y"], y)


def test_fitting_on_bucket_means_still_learns_the_daily_cycle_at_two_minute_timestamps() -> None:
    train = daily_frame(2160, "2018-02-05")  # three days
    options = OPTIONS.model_copy(update={"PROPHET_FIT_RESAMPLE_MINUTES": 10})
    models = fit_prophet_models(train, options, workers=1, columns=("down", "up"))
    assert list(models) == ["down", "up"]
    test = daily_frame(120, "2018-02-08")
    predicted = ProphetForecaster(models, ("down", "up")).predict(pd.DatetimeIndex(test.index))
    actual = test[["down", "up"]].to_numpy()
    assert np.sqrt(np.mean((predicted - actual) ** 2)) < 0.02


def test_in_process_fitting_honours_the_stop_flag_before_each_kpi() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(ProphetStopped):
        fit_prophet_models(daily_frame(720, "2018-02-05"), OPTIONS, workers=1, stop=stop)
