"""The batch forecast frame: which window forecasts which row, the horizon after the split, the
errors logged to the champion's run, and the object keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from batch_container.forecast import (
    COLUMNS,
    HORIZON,
    KIND,
    ROLLING,
    TIME,
    UnusableBatch,
    actual_column,
    batch_frame,
    batch_metrics,
    forecast_column,
    horizon_of,
    rows_of,
)
from batch_container.keys import forecast_key, latest_claim_key, record_key
from shared.data import KPI_COLUMNS, MinMaxScaler
from shared.model_runtime.networks import ModelSpec, build_model
from shared.model_runtime.recurrent import RecurrentForecast

STEP = np.timedelta64(120, "s")
N_KPI = len(KPI_COLUMNS)


@dataclass(frozen=True)
class WindowEcho:
    """A Forecast whose answer names its window: step h is last + h * (last - first) + rows, so a
    window shifted by one row, or of another length, gives other numbers."""

    input_seq_len: int
    step: np.timedelta64 = STEP

    def predict(self, timestamps: np.ndarray, kpis: np.ndarray, horizon: int) -> np.ndarray:
        window = np.asarray(kpis[-self.input_seq_len :], dtype=np.float64)
        first, last = window[0], window[-1]
        steps = np.arange(1, horizon + 1, dtype=np.float64)[:, None]
        answer: np.ndarray = last + steps * (last - first) + len(window)
        return answer

    def predict_many(self, windows: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> list[np.ndarray]:
        return [self.predict(t, k, h) for t, k, h in windows]


def split(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    start = np.datetime64("2018-02-28T02:34:00", "ns")
    timestamps = start + np.arange(rows) * STEP
    kpis = np.random.default_rng(seed).uniform(1.0, 1000.0, size=(rows, N_KPI))
    return timestamps, kpis


def forecasts(frame: pd.DataFrame) -> np.ndarray:
    values: np.ndarray = frame[[forecast_column(k) for k in KPI_COLUMNS]].to_numpy(dtype=np.float64)
    return values


def test_every_row_after_the_first_window_is_forecast_from_the_rows_just_before_it() -> None:
    timestamps, kpis = split(40)
    model = WindowEcho(input_seq_len=10)
    frame = batch_frame(model, timestamps, kpis, horizon=5)
    rolling = frame[frame[KIND] == ROLLING]
    assert len(rolling) == 40
    predicted = forecasts(rolling)
    assert np.isnan(predicted[:10]).all(), "the first input_seq_len rows have no full window before them"
    for t in range(10, 40):
        expected = model.predict(timestamps[t - 10 : t], kpis[t - 10 : t], 1)[0]
        np.testing.assert_array_equal(predicted[t], expected, err_msg=f"row {t}")


def test_the_horizon_follows_the_last_row_at_the_models_step_from_the_last_window() -> None:
    timestamps, kpis = split(30)
    model = WindowEcho(input_seq_len=8)
    frame = batch_frame(model, timestamps, kpis, horizon=12)
    ahead = frame[frame[KIND] == HORIZON]
    assert len(ahead) == 12
    np.testing.assert_array_equal(forecasts(ahead), model.predict(timestamps[-8:], kpis[-8:], 12))
    expected_times = timestamps[-1] + np.arange(1, 13) * STEP
    np.testing.assert_array_equal(ahead[TIME].to_numpy(dtype="datetime64[ns]"), expected_times)
    assert ahead[[actual_column(k) for k in KPI_COLUMNS]].isna().all().all()


def test_the_frame_carries_the_splits_timestamps_and_actuals_in_its_columns() -> None:
    timestamps, kpis = split(25)
    frame = batch_frame(WindowEcho(input_seq_len=10), timestamps, kpis, horizon=3)
    assert tuple(frame.columns) == COLUMNS
    assert len(frame) == 25 + 3
    assert (rows_of(frame), horizon_of(frame)) == (25, 3)
    rolling = frame[frame[KIND] == ROLLING]
    np.testing.assert_array_equal(rolling[TIME].to_numpy(dtype="datetime64[ns]"), timestamps)
    np.testing.assert_array_equal(rolling[[actual_column(k) for k in KPI_COLUMNS]].to_numpy(), kpis)


def test_a_real_gru_forecasts_each_row_as_its_own_window_would_be_answered() -> None:
    torch.manual_seed(0)
    timestamps, kpis = split(60, seed=3)
    scaler = MinMaxScaler.fit(pd.DataFrame(kpis, columns=list(KPI_COLUMNS)))
    network = build_model(ModelSpec("GRU", hidden_size=8, input_seq_len=10, output_seq_len=1)).eval()
    model = RecurrentForecast(network, scaler, 10, 1, STEP)
    frame = batch_frame(model, timestamps, kpis, horizon=4)
    predicted = forecasts(frame)
    # Batched windows against one window at a time: the same numbers up to float32 summation order.
    for t in (10, 33, 59):
        one = model.predict(timestamps[t - 10 : t], kpis[t - 10 : t], 1)[0]
        np.testing.assert_allclose(predicted[t], one, rtol=1e-5)
    np.testing.assert_allclose(predicted[60:], model.predict(timestamps, kpis, 4), rtol=1e-5)
    assert np.isfinite(predicted[10:]).all()


def test_a_split_with_rows_not_at_the_models_step_is_refused() -> None:
    timestamps, kpis = split(30)
    timestamps[17:] += np.timedelta64(60, "s")
    with pytest.raises(UnusableBatch, match="rows 16 and 17"):
        batch_frame(WindowEcho(input_seq_len=10), timestamps, kpis, horizon=2)


def test_a_split_no_longer_than_the_window_is_refused() -> None:
    timestamps, kpis = split(10)
    with pytest.raises(UnusableBatch, match="needs more than 10"):
        batch_frame(WindowEcho(input_seq_len=10), timestamps, kpis, horizon=2)


def test_a_non_finite_forecast_is_refused() -> None:
    timestamps, kpis = split(20)
    kpis[5, 0] = np.inf
    with pytest.raises(UnusableBatch, match="not finite"):
        batch_frame(WindowEcho(input_seq_len=4), timestamps, kpis, horizon=2)


def test_batch_metrics_are_the_rmse_of_down_and_up_and_of_persistence_on_the_forecast_rows() -> None:
    timestamps, kpis = split(20)
    frame = batch_frame(WindowEcho(input_seq_len=5), timestamps, kpis, horizon=3)
    rolling = frame[KIND] == ROLLING
    # Forecasts off by exactly 3 (down) and 4 (up) on every forecast row.
    frame.loc[rolling, forecast_column("down")] = frame.loc[rolling, actual_column("down")] + 3.0
    frame.loc[rolling, forecast_column("up")] = frame.loc[rolling, actual_column("up")] - 4.0
    frame.loc[frame.index[:5], [forecast_column("down"), forecast_column("up")]] = np.nan
    metrics = batch_metrics(frame)
    assert metrics["batch_rows"] == 15
    assert metrics["batch_rmse_down"] == pytest.approx(3.0)
    assert metrics["batch_rmse_up"] == pytest.approx(4.0)
    down = kpis[:, 0]
    persistence = np.sqrt(np.mean((down[5:] - down[4:-1]) ** 2))
    assert metrics["baseline_batch_rmse_down"] == pytest.approx(persistence)


def test_keys_name_station_config_hash_and_run_and_the_record_differs_from_the_parquet() -> None:
    config_hash = "a" * 64
    key = forecast_key("PobleSec", config_hash, "run123")
    assert key == f"PobleSec/{config_hash}/run123.parquet"
    assert record_key("PobleSec", config_hash, "run123") == f"PobleSec/{config_hash}/run123.json"
    assert forecast_key("PobleSec", config_hash, "run456") != key
    assert latest_claim_key("PobleSec") == "PobleSec/latest-claim.json"
