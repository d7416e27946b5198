"""Rolling forecasts over a processed split: every row predicted from the window before it.

The trainers score a fitted model this way (validation and test figures), and the batch
forecaster forecasts a claimed test split with a champion the same way, so both read a split
through `validate_frame` and `Series` and predict through `forecast_rows`. No plotting or MLflow
here: the batch image carries neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, MinMaxScaler
from shared.kafka import PoisonMessage
from shared.model_runtime.forecasting import Forecast

# Windows per predict_many call: large enough that a recurrent forward pass is not dominated by
# per-call overhead, small enough that the recursive buffer of a horizon-30 batch stays a few MB.
PREDICT_CHUNK = 512


@dataclass(frozen=True)
class Series:
    """One split as a Forecast is asked about it: timestamps and the 11 KPIs in original units."""

    timestamps: np.ndarray  # (N,) datetime64[ns]
    kpis: np.ndarray  # (N, 11) float64

    @classmethod
    def from_scaled(cls, frame: pd.DataFrame, scaler: MinMaxScaler) -> Series:
        """Undo the train-fit scaling of a processed split (back to original units, to float64 rounding)."""
        timestamps = pd.DatetimeIndex(frame.index).to_numpy(dtype="datetime64[ns]")
        kpis = scaler.inverse_array(frame.loc[:, list(KPI_COLUMNS)].to_numpy(dtype=np.float64))
        return cls(timestamps, kpis)


@dataclass(frozen=True)
class ScoredRows:
    """A forecast of rows first..N-1 of a series, all in original units, next to persistence."""

    timestamps: np.ndarray  # (rows,) of the predicted rows
    predicted: np.ndarray  # (rows, 11)
    actual: np.ndarray  # (rows, 11)
    baseline: np.ndarray  # (rows, 11): the last value of each input window


def forecast_rows(
    forecast: Forecast,
    series: Series,
    first: int,
    input_len: int,
    horizon: int = 1,
    chunk: int = PREDICT_CHUNK,
) -> ScoredRows:
    """Predict each row t in first..N-1 from the window of `input_len` rows ending `horizon` rows
    before it: the window is rows t-horizon-input_len+1 .. t-horizon, the prediction the
    `horizon`-th step of its recursive forecast, the baseline row t-horizon.

    Windows may reach back before `first` (validation windows start in the fitted rows, as a
    request does at inference time). ValueError when a window would start before row 0, when there
    is nothing to predict, or when the forecast answers the wrong shape.
    """
    rows = len(series.kpis)
    if horizon < 1 or input_len < 1 or chunk < 1:
        raise ValueError("horizon, input_len and chunk must be positive")
    if first < input_len + horizon - 1:
        raise ValueError(f"row {first} has no full window of {input_len} rows {horizon} steps before it")
    if first >= rows:
        raise ValueError(f"no rows to predict: the series has {rows} rows, scoring starts at row {first}")
    ends = np.arange(first - horizon, rows - horizon)  # the last row of each input window
    predicted = np.empty((len(ends), series.kpis.shape[1]), dtype=np.float64)
    for start in range(0, len(ends), chunk):
        batch = ends[start : start + chunk]
        # Views, not copies: a window is two slices of the series.
        windows = [
            (
                series.timestamps[end + 1 - input_len : end + 1],
                series.kpis[end + 1 - input_len : end + 1],
                horizon,
            )
            for end in batch
        ]
        answers = forecast.predict_many(windows)
        expected = (horizon, series.kpis.shape[1])
        if len(answers) != len(windows) or any(np.shape(a) != expected for a in answers):
            shapes = sorted({np.shape(a) for a in answers})
            raise ValueError(
                f"forecast answered {len(answers)} arrays of shapes {shapes} for {len(windows)} "
                f"windows; expected shape {expected} each"
            )
        predicted[start : start + len(batch)] = np.stack(answers)[:, horizon - 1]
    return ScoredRows(series.timestamps[first:], predicted, series.kpis[first:], series.kpis[ends])


def validate_frame(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check the processed-data contract; raise PoisonMessage naming what is wrong."""
    if list(frame.columns) != list(FEATURE_COLUMNS):
        raise PoisonMessage(f"{name}: columns {list(frame.columns)} differ from {list(FEATURE_COLUMNS)}")
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise PoisonMessage(f"{name}: index is {type(frame.index).__name__}, not a DatetimeIndex")
    if not frame.index.is_monotonic_increasing or frame.index.has_duplicates:
        raise PoisonMessage(f"{name}: time index is not strictly increasing")
    values = frame.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise PoisonMessage(f"{name}: contains NaN or infinite values")
    return frame.astype(np.float64)
