"""Prophet: curves evaluated without Prophet.predict, forecasts from the client's window, JSON
storage without pickle, the window correction, and a trainer that never fits the validation rows."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest

from nonml_container.correction import fit_window_correction
from nonml_container.fitting import ProphetStopped, fit_frame, fit_one_kpi, fit_prophet_models
from nonml_container.settings import ProphetHyperparameters, ProphetSettings
from nonml_container.trainer import ProphetTrainer
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, STEP, MinMaxScaler, time_features
from shared.model_runtime.prophet import (
    MANIFEST_FILE,
    ProphetCurves,
    ProphetForecast,
    WindowCorrection,
    load_prophet_forecast,
    load_prophet_models,
    save_prophet_models,
)

# prophet's own pandas calls warn about deprecations; nothing this project can change
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:prophet.*")

OPTIONS = ProphetHyperparameters(PROPHET_CHANGEPOINTS=3, PROPHET_DAILY_FOURIER=3, PROPHET_WEEKLY_FOURIER=1)
STEP64 = np.timedelta64(120, "s")
INPUT_LEN = 10
Mode = Literal["additive", "multiplicative"]
Scaling = Literal["absmax", "minmax"]


def daily_frame(rows: int, start: str, noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    index = pd.date_range(start, periods=rows, freq=STEP, name="time")
    minutes = (index.hour * 60 + index.minute).to_numpy(dtype=float)
    daily = 0.5 + 0.3 * np.sin(2 * np.pi * minutes / 1440.0)
    kpis = np.repeat(daily[:, None], len(KPI_COLUMNS), axis=1) + np.linspace(0, 0.1, len(KPI_COLUMNS))
    kpis += np.random.default_rng(seed).normal(0.0, noise, kpis.shape) if noise else 0.0
    frame = pd.DataFrame(kpis, index=index, columns=list(KPI_COLUMNS))
    return pd.concat([frame, time_features(index).set_axis(index)], axis=1)[list(FEATURE_COLUMNS)]


def unit_scaler() -> MinMaxScaler:
    """Scaled units are original units: the numbers of a test read the same on both sides."""
    return MinMaxScaler(KPI_COLUMNS, tuple([0.0] * len(KPI_COLUMNS)), tuple([1.0] * len(KPI_COLUMNS)))


@pytest.fixture(scope="module")
def fitted() -> dict[str, object]:
    from prophet.serialize import model_from_json

    train = daily_frame(1440, "2018-02-05")  # two days
    models: dict[str, object] = {}
    for kpi in KPI_COLUMNS:
        name, payload = fit_one_kpi(kpi, train.index.to_numpy(), train[kpi].to_numpy(), OPTIONS)
        models[name] = model_from_json(payload)
    return models


def _curves(models: dict[str, object]) -> ProphetCurves:
    return ProphetCurves.from_models(models, KPI_COLUMNS)  # type: ignore[arg-type]


def _window(start: str, rows: int = INPUT_LEN, level: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    timestamps = pd.date_range(start, periods=rows, freq=STEP).to_numpy()
    return timestamps, np.full((rows, len(KPI_COLUMNS)), level)


@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
@pytest.mark.parametrize("scaling", ["absmax", "minmax"])
def test_curves_from_the_parameters_equal_prophet_predict(mode: Mode, scaling: Scaling) -> None:
    from prophet import Prophet

    rng = np.random.default_rng(5)
    index = pd.date_range("2018-02-05", periods=3000, freq=STEP)
    hours = index.hour.to_numpy(dtype=float)
    y = 1.0 + np.arange(3000) / 3000 + 0.3 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 0.05, 3000)
    model = Prophet(
        seasonality_mode=mode,
        scaling=scaling,
        n_changepoints=5,
        yearly_seasonality=False,
        weekly_seasonality=False,
        daily_seasonality=False,
        uncertainty_samples=0,
    )
    model.add_seasonality(name="daily", period=1.0, fourier_order=4)
    # a seasonality of the other mode and one sharing the daily frequencies: both add up correctly
    other: Mode = "additive" if mode == "multiplicative" else "multiplicative"
    model.add_seasonality(name="weekly", period=7.0, fourier_order=3, mode=other)
    model.add_seasonality(name="half_day", period=0.5, fourier_order=2)
    model.fit(pd.DataFrame({"ds": index, "y": y}))
    # before, inside and well after the fitted span, across every changepoint
    future = pd.date_range("2018-02-04", periods=9000, freq="2min")
    expected = model.predict(pd.DataFrame({"ds": future}))["yhat"].to_numpy()
    got = ProphetCurves.from_models({"down": model}, ["down"]).evaluate(future.to_numpy())
    assert got.shape == (len(future), 1)
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-10, atol=1e-12)


def test_models_with_features_the_curves_do_not_reproduce_are_refused() -> None:
    from prophet import Prophet

    index = pd.date_range("2018-02-05", periods=200, freq=STEP)
    frame = pd.DataFrame({"ds": index, "y": np.linspace(0, 1, 200), "load": np.linspace(1, 0, 200)})
    model = Prophet(yearly_seasonality=False, weekly_seasonality=False, daily_seasonality=False)
    model.add_regressor("load")
    model.fit(frame)
    with pytest.raises(ValueError, match="regressors"):
        ProphetCurves.from_models({"down": model}, ["down"])
    with pytest.raises(ValueError, match="up"):
        ProphetCurves.from_models({"down": model}, ["down", "up"])


def test_forecast_follows_the_clients_window(fitted: dict[str, object]) -> None:
    forecast = ProphetForecast(
        _curves(fitted), WindowCorrection.last_value(len(KPI_COLUMNS)), unit_scaler(), INPUT_LEN, STEP64
    )
    timestamps, low = _window("2018-02-07 10:00", level=0.2)
    _, high = _window("2018-02-07 10:00", level=0.6)
    at_low, at_high = forecast.predict(timestamps, low, 3), forecast.predict(timestamps, high, 3)
    assert at_low.shape == at_high.shape == (3, len(KPI_COLUMNS))
    # same timestamps, different window: the forecast moves with the window's level
    np.testing.assert_allclose(at_high - at_low, 0.4, atol=1e-9)
    # last-value correction: Prophet's curve moved to pass through the last observation
    ahead = timestamps[-1] + np.arange(0, 4) * STEP64
    curve = _curves(fitted).evaluate(ahead)
    np.testing.assert_allclose(at_high, 0.6 + curve[1:] - curve[0], atol=1e-9)


def test_fitted_weights_and_gain_are_applied_step_by_step(fitted: dict[str, object]) -> None:
    weights = np.tile(np.linspace(0.0, 0.2, INPUT_LEN), (len(KPI_COLUMNS), 1))
    correction = WindowCorrection(weights, np.full(len(KPI_COLUMNS), 0.5))
    forecast = ProphetForecast(_curves(fitted), correction, unit_scaler(), INPUT_LEN, STEP64)
    timestamps, _ = _window("2018-02-07 18:00")
    kpis = np.random.default_rng(1).uniform(0.2, 0.8, (INPUT_LEN, len(KPI_COLUMNS)))
    got = forecast.predict(timestamps, kpis, 2)
    curve = _curves(fitted).evaluate(timestamps[-1] + np.arange(0, 3) * STEP64)
    first = (kpis * weights.T).sum(axis=0) + 0.5 * (curve[1] - curve[0])
    rows = np.vstack([kpis[1:], first])
    second = (rows * weights.T).sum(axis=0) + 0.5 * (curve[2] - curve[1])
    np.testing.assert_allclose(got, np.maximum(np.vstack([first, second]), 0.0), atol=1e-12)


def test_a_batch_of_windows_gives_each_window_its_own_forecast(fitted: dict[str, object]) -> None:
    weights = np.tile(np.linspace(0.05, 0.15, INPUT_LEN), (len(KPI_COLUMNS), 1))
    correction = WindowCorrection(weights, np.full(len(KPI_COLUMNS), 0.9))
    forecast = ProphetForecast(_curves(fitted), correction, unit_scaler(), INPUT_LEN, STEP64)
    rng = np.random.default_rng(2)
    windows = []
    for i, horizon in enumerate((1, 30, 2, 7)):
        timestamps, _ = _window(f"2018-02-0{i + 6} 0{i}:10", rows=INPUT_LEN + i)
        windows.append((timestamps, rng.uniform(0.0, 1.0, (len(timestamps), len(KPI_COLUMNS))), horizon))
    batched = forecast.predict_many(windows)
    assert [b.shape for b in batched] == [(1, 11), (30, 11), (2, 11), (7, 11)]
    for (timestamps, kpis, horizon), got in zip(windows, batched, strict=True):
        np.testing.assert_allclose(got, forecast.predict(timestamps, kpis, horizon), atol=1e-12)
    assert forecast.predict_many([]) == []


def test_forecasts_never_go_below_the_physical_floor(fitted: dict[str, object]) -> None:
    # a correction that falls steeply every step, in scaled units
    correction = WindowCorrection(np.full((len(KPI_COLUMNS), 1), 0.5), np.full(len(KPI_COLUMNS), -50.0))
    scaler = MinMaxScaler(KPI_COLUMNS, tuple([10.0] * 11), tuple([100.0] * 11))
    forecast = ProphetForecast(_curves(fitted), correction, scaler, INPUT_LEN, STEP64)
    timestamps, kpis = _window("2018-02-07 23:40", level=20.0)  # where the daily cycle rises fastest
    got = forecast.predict(timestamps, kpis, 30)
    assert np.all(got >= 0.0)
    assert np.any(got == 0.0)


def test_short_windows_and_bad_horizons_are_refused(fitted: dict[str, object]) -> None:
    forecast = ProphetForecast(
        _curves(fitted), WindowCorrection.last_value(len(KPI_COLUMNS)), unit_scaler(), INPUT_LEN, STEP64
    )
    timestamps, kpis = _window("2018-02-07 06:00", rows=INPUT_LEN - 1)
    with pytest.raises(ValueError, match="at least"):
        forecast.predict(timestamps, kpis, 1)
    timestamps, kpis = _window("2018-02-07 06:00")
    with pytest.raises(ValueError, match="horizon"):
        forecast.predict(timestamps, kpis, 0)
    with pytest.raises(ValueError, match="reads 11 rows"):
        ProphetForecast(
            _curves(fitted), WindowCorrection.last_value(11, lags=11), unit_scaler(), INPUT_LEN, STEP64
        )


def test_models_round_trip_through_json_files_without_pickle(
    fitted: dict[str, object], tmp_path: Path
) -> None:
    weights = np.tile(np.linspace(0.0, 0.2, INPUT_LEN), (len(KPI_COLUMNS), 1))
    correction = WindowCorrection(weights, np.linspace(0.5, 1.0, len(KPI_COLUMNS)))
    save_prophet_models(fitted, correction, tmp_path / "PROPHET")
    manifest = json.loads((tmp_path / "PROPHET" / MANIFEST_FILE).read_text())
    assert manifest["columns"] == list(KPI_COLUMNS)
    assert not list((tmp_path / "PROPHET").glob("*.pkl"))
    scaler = MinMaxScaler(KPI_COLUMNS, tuple([1.0] * 11), tuple(float(v) for v in np.linspace(10, 1e6, 11)))
    reloaded = load_prophet_forecast(tmp_path / "PROPHET", scaler, INPUT_LEN, STEP64)
    in_memory = ProphetForecast(_curves(fitted), correction, scaler, INPUT_LEN, STEP64)
    timestamps, kpis = _window("2018-02-07 12:00", level=5e4)
    np.testing.assert_array_equal(reloaded.correction.weights, weights)
    np.testing.assert_allclose(reloaded.predict(timestamps, kpis, 5), in_memory.predict(timestamps, kpis, 5))


def test_a_folder_saved_without_a_correction_is_served_through_the_last_observation(
    fitted: dict[str, object], tmp_path: Path
) -> None:
    save_prophet_models(fitted, WindowCorrection.last_value(11), tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    del manifest["correction"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    forecast = load_prophet_forecast(tmp_path, unit_scaler(), INPUT_LEN, STEP64)
    np.testing.assert_array_equal(forecast.correction.weights, np.ones((11, 1)))
    np.testing.assert_array_equal(forecast.correction.gain, np.ones(11))


def test_loading_a_folder_of_another_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"kind": "pickle", "files": {}}))
    with pytest.raises(ValueError, match="prophet-per-kpi"):
        load_prophet_forecast(tmp_path, unit_scaler(), INPUT_LEN, STEP64)


def test_window_correction_recovers_known_weights_and_gain() -> None:
    rng = np.random.default_rng(3)
    rows, lags = 12000, 3
    timestamps = pd.date_range("2018-02-05", periods=rows, freq=STEP).to_numpy()
    # Prophet's steps as independent draws: the gain is then not confounded with the lags
    curve = np.cumsum(rng.normal(0, 0.1, (rows, 2)), axis=0)
    true_weights, true_gain = np.array([0.1, 0.2, 0.6]), np.array([0.8, 0.3])
    values = np.zeros((rows, 2))
    values[:lags] = rng.normal(0, 1, (lags, 2))
    for i in range(lags, rows):
        values[i] = true_weights @ values[i - lags : i] + true_gain * (curve[i] - curve[i - 1])
        values[i] += rng.normal(0, 0.1, 2)
    correction, used = fit_window_correction(
        values, curve, timestamps, first_target=1000, lags=lags, step=STEP64
    )
    assert used == rows - 1000
    np.testing.assert_allclose(correction.weights, np.vstack([true_weights, true_weights]), atol=0.02)
    np.testing.assert_allclose(correction.gain, true_gain, atol=0.05)


def test_window_correction_skips_windows_across_gaps_and_falls_back_on_too_few_rows() -> None:
    first = pd.date_range("2018-02-05", periods=30, freq=STEP)
    timestamps = first.append(pd.date_range("2018-02-06", periods=30, freq=STEP)).to_numpy()
    values = np.random.default_rng(4).normal(0, 1, (60, 1))
    _, used = fit_window_correction(values, values * 0, timestamps, first_target=0, lags=2, step=STEP64)
    assert used == 60 - 2 * 2  # two rows of each run have no full window before them
    correction, used = fit_window_correction(
        values[:8], values[:8] * 0, timestamps[:8], first_target=0, lags=2, step=STEP64
    )
    assert used == 0
    np.testing.assert_array_equal(correction.weights, [[0.0, 1.0]])


def _settings(**options: Any) -> ProphetSettings:
    hyper = OPTIONS.model_dump()
    return ProphetSettings.model_construct(**{**hyper, "PROPHET_WORKERS": 1, **options})


def test_trainer_fits_only_the_rows_before_the_validation_period(tmp_path: Path) -> None:
    train = daily_frame(2880, "2018-02-05", noise=0.02)  # four days
    start = 2160
    poisoned = train.copy()
    poisoned.iloc[start:, : len(KPI_COLUMNS)] = 50.0  # the validation rows: anything at all
    outcomes = [
        ProphetTrainer(_settings()).fit(
            frame, start, INPUT_LEN, threading.Event(), scaler=unit_scaler(), step=STEP64
        )
        for frame in (train, poisoned)
    ]
    assert outcomes[0].extra_metrics["correction_rows"] > 0
    timestamps, kpis = _window("2018-02-08 12:00")
    clean, dirty = (o.forecast.predict(timestamps, kpis, 30) for o in outcomes)
    np.testing.assert_array_equal(clean, dirty)
    outcomes[0].save_model(tmp_path)
    models, _, _ = load_prophet_models(tmp_path)
    for model in models.values():
        assert model.history is not None and model.history["ds"].max() < train.index[start]
    # a clean daily cycle is followed far better than by the last value alone
    test = daily_frame(200, "2018-02-09 00:20")
    errors, persistence = [], []
    for end in range(INPUT_LEN, 200 - 30):
        window = test.iloc[end - INPUT_LEN : end]
        got = outcomes[0].forecast.predict(window.index.to_numpy(), window[list(KPI_COLUMNS)].to_numpy(), 30)
        errors.append(got[-1] - test[list(KPI_COLUMNS)].to_numpy()[end + 29])
        persistence.append(
            window[list(KPI_COLUMNS)].to_numpy()[-1] - test[list(KPI_COLUMNS)].to_numpy()[end + 29]
        )
    assert np.sqrt(np.mean(np.square(errors))) < 0.5 * np.sqrt(np.mean(np.square(persistence)))


def test_trainer_refuses_a_split_with_nothing_before_the_validation_period() -> None:
    from shared.trainer_service import FitFailed

    with pytest.raises(FitFailed, match="before the validation period"):
        ProphetTrainer(_settings()).fit(
            daily_frame(20, "2018-02-05"), 1, INPUT_LEN, threading.Event(), scaler=unit_scaler(), step=STEP64
        )


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
    curves = ProphetCurves.from_models(models, ("down", "up"))  # type: ignore[arg-type]
    predicted = curves.evaluate(test.index.to_numpy())
    actual = test[["down", "up"]].to_numpy()
    assert np.sqrt(np.mean((predicted - actual) ** 2)) < 0.02


def test_in_process_fitting_honours_the_stop_flag_before_each_kpi() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(ProphetStopped):
        fit_prophet_models(daily_frame(720, "2018-02-05"), OPTIONS, workers=1, stop=stop)
