"""model_runtime.forecasting and .recurrent: the training feature path's numbers, recursion, batching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, MinMaxScaler, time_features
from shared.model_runtime.forecasting import time_feature_array
from shared.model_runtime.networks import ModelSpec, build_model
from shared.model_runtime.ranges import KpiRanges
from shared.model_runtime.recurrent import RecurrentForecast, forecast_recurrent

STEP = np.timedelta64(120, "s")


def _model(output_seq_len: int = 1, model_type: str = "GRU", input_seq_len: int = 10) -> torch.nn.Module:
    torch.manual_seed(7)
    model = build_model(
        ModelSpec(model_type, hidden_size=8, input_seq_len=input_seq_len, output_seq_len=output_seq_len)
    )
    return model.eval()


def _window(
    rows: int = 12, start: str = "2018-02-28 23:40:00"
) -> tuple[np.ndarray, np.ndarray, MinMaxScaler]:
    rng = np.random.default_rng(3)
    timestamps = pd.date_range(start, periods=rows, freq="2min").to_numpy()
    kpis = rng.uniform(1.0, 1e6, size=(rows, len(KPI_COLUMNS)))
    scaler = MinMaxScaler(KPI_COLUMNS, tuple([0.5] * 11), tuple(float(v) for v in np.linspace(10, 2e6, 11)))
    return timestamps, kpis, scaler


def _direct(
    model: torch.nn.Module, scaler: MinMaxScaler, timestamps: np.ndarray, kpis: np.ndarray
) -> np.ndarray:
    """The training-time path: pandas time features, scaler.transform, one forward pass, and the
    physical floor every forecast is clipped to."""
    frame = pd.DataFrame(kpis, columns=list(KPI_COLUMNS), index=pd.DatetimeIndex(timestamps))
    frame = scaler.transform(frame).join(time_features(frame.index))[list(FEATURE_COLUMNS)]
    x = torch.tensor(frame.to_numpy(dtype=np.float32)[None])
    with torch.no_grad():
        y = model(x)[0].numpy().astype(np.float64)
    return KpiRanges.from_scaler(scaler).clip(scaler.inverse_array(y))


def test_time_feature_array_matches_pandas_time_features_across_days_weeks_and_leap_years() -> None:
    stamps = pd.DatetimeIndex(
        [
            "2018-02-28 23:58:00",
            "2018-03-01 00:00:00",
            "2019-12-31 23:59:30",
            "2020-02-29 12:34:56",
            "2024-12-31 00:02:00",
            "1999-07-04 06:00:00",
        ]
    ).append(pd.date_range("2018-02-05 23:40", periods=800, freq="17min"))
    expected = time_features(stamps).to_numpy()
    np.testing.assert_allclose(time_feature_array(stamps.to_numpy()), expected, rtol=0, atol=1e-12)


def test_one_step_forecast_equals_a_direct_model_call_on_the_same_window() -> None:
    model = _model()
    timestamps, kpis, scaler = _window(10)
    got = forecast_recurrent(
        model, scaler, timestamps, kpis, 1, step=STEP, input_seq_len=10, output_seq_len=1
    )
    np.testing.assert_allclose(got, _direct(model, scaler, timestamps, kpis), rtol=1e-6, atol=1e-3)


def test_only_the_last_input_seq_len_rows_are_used() -> None:
    model = _model()
    timestamps, kpis, scaler = _window(30)
    full = forecast_recurrent(
        model, scaler, timestamps, kpis, 2, step=STEP, input_seq_len=10, output_seq_len=1
    )
    tail = forecast_recurrent(
        model, scaler, timestamps[-10:], kpis[-10:], 2, step=STEP, input_seq_len=10, output_seq_len=1
    )
    np.testing.assert_array_equal(full, tail)


def test_horizon_beyond_output_length_feeds_predictions_back_with_future_time_features() -> None:
    model = _model()
    timestamps, kpis, scaler = _window(10)
    got = forecast_recurrent(
        model, scaler, timestamps, kpis, 3, step=STEP, input_seq_len=10, output_seq_len=1
    )
    assert got.shape == (3, len(KPI_COLUMNS))
    # Manual recursion through the training-time path, one step at a time.
    ts, values = list(timestamps), kpis.copy()
    for i in range(3):
        step_pred = _direct(model, scaler, np.array(ts[-10:]), values[-10:])
        np.testing.assert_allclose(got[i], step_pred[0], rtol=1e-5, atol=1e-3)
        ts.append(ts[-1] + STEP)
        values = np.vstack([values, step_pred])


def test_multi_step_model_output_is_cut_to_the_requested_horizon() -> None:
    model = _model(output_seq_len=2, model_type="LSTM")
    timestamps, kpis, scaler = _window(10)
    forecast = RecurrentForecast(model, scaler, 10, 2, STEP)
    three = forecast.predict(timestamps, kpis, 3)
    two = forecast.predict(timestamps, kpis, 2)
    assert three.shape == (3, len(KPI_COLUMNS))
    np.testing.assert_array_equal(three[:2], two)
    np.testing.assert_allclose(two, _direct(model, scaler, timestamps, kpis), rtol=1e-6, atol=1e-3)


def test_forecast_refuses_a_window_shorter_than_the_model_input() -> None:
    timestamps, kpis, scaler = _window(5)
    with pytest.raises(ValueError, match="at least 10 rows"):
        forecast_recurrent(
            _model(), scaler, timestamps, kpis, 1, step=STEP, input_seq_len=10, output_seq_len=1
        )


def test_scaler_over_other_columns_is_refused() -> None:
    timestamps, kpis, _ = _window(10)
    wrong = MinMaxScaler(tuple(reversed(KPI_COLUMNS)), tuple([0.0] * 11), tuple([1.0] * 11))
    with pytest.raises(ValueError, match="not the KPI columns"):
        forecast_recurrent(
            _model(), wrong, timestamps, kpis, 1, step=STEP, input_seq_len=10, output_seq_len=1
        )


def test_a_batch_of_windows_gives_each_window_its_own_forecast() -> None:
    model = _model(output_seq_len=2)
    forecast = RecurrentForecast(model, _window()[2], 10, 2, STEP)
    windows = []
    for i, horizon in enumerate((1, 5, 2, 3)):
        timestamps, kpis, _ = _window(10 + i, start=f"2018-03-0{i + 1} 10:00:00")
        windows.append((timestamps, kpis * (i + 1), horizon))
    batched = forecast.predict_many(windows)
    assert [b.shape for b in batched] == [(1, 11), (5, 11), (2, 11), (3, 11)]
    for (timestamps, kpis, horizon), got in zip(windows, batched, strict=True):
        np.testing.assert_allclose(got, forecast.predict(timestamps, kpis, horizon), rtol=1e-5, atol=1e-3)


def test_recurrent_forecasts_never_go_below_the_physical_floor_even_when_fed_back() -> None:
    model = _model()
    head = model.head
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.weight.fill_(0.0)
        head.bias.fill_(-5.0)  # every step a large fall, in scaled units
    timestamps, kpis, scaler = _window(10)
    got = forecast_recurrent(
        model, scaler, timestamps, kpis, 5, step=STEP, input_seq_len=10, output_seq_len=1
    )
    assert np.all(got >= 0.0)
    assert np.any(got == 0.0)
