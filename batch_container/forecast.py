"""The batch forecast of one claimed split: its rows, its object keys and its errors.

Pure functions (no I/O): the service reads the split and the champion, these turn them into the
Parquet's frame and the figures logged to the champion's run.

The frame has one row per row of the split, in order, then one per forecast step after it:
- `time`; `kind`: `rolling` for the split's rows, `horizon` for the steps after the last one;
- `actual_<kpi>`: the split's values in original units (empty on `horizon` rows);
- `forecast_<kpi>`: on a `rolling` row, the one-step forecast from the `input_seq_len` rows before
  it (empty on the first `input_seq_len` rows, which have no full window before them); on a
  `horizon` row, step h of the recursive forecast from the split's last `input_seq_len` rows.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from shared.accuracy import per_column_rmse
from shared.data import KPI_COLUMNS
from shared.model_runtime.forecasting import Forecast, future_timestamps
from shared.rolling import Series, forecast_rows

TIME: Final = "time"
KIND: Final = "kind"
ROLLING: Final = "rolling"
HORIZON: Final = "horizon"
# The KPIs whose batch errors are logged to the champion's run (original units).
SCORED_KPIS: Final = ("down", "up")


def actual_column(kpi: str) -> str:
    return f"actual_{kpi}"


def forecast_column(kpi: str) -> str:
    return f"forecast_{kpi}"


COLUMNS: Final = (
    TIME,
    KIND,
    *(actual_column(k) for k in KPI_COLUMNS),
    *(forecast_column(k) for k in KPI_COLUMNS),
)


class UnusableBatch(ValueError):
    """The split cannot be forecast with this model; the message says why."""


def batch_frame(forecast: Forecast, timestamps: np.ndarray, kpis: np.ndarray, horizon: int) -> pd.DataFrame:
    """The batch forecast of a split (timestamps (N,), KPIs (N, 11) in original units) as the
    frame described above. UnusableBatch when the split's rows are not the model's step apart,
    no row has a full window before it, or the model answers a non-finite forecast."""
    input_len = forecast.input_seq_len
    rows = len(timestamps)
    if horizon < 1:
        raise UnusableBatch(f"the horizon must be at least 1, got {horizon}")
    if rows <= input_len:
        raise UnusableBatch(f"the split has {rows} rows; the model needs more than {input_len}")
    series = Series(np.asarray(timestamps, dtype="datetime64[ns]"), np.asarray(kpis, dtype=np.float64))
    gaps = np.flatnonzero(np.diff(series.timestamps) != forecast.step)
    if gaps.size:
        # Every window must be the model's step apart, as its time features were in training.
        i = int(gaps[0])
        raise UnusableBatch(
            f"rows {i} and {i + 1} of the split are not {forecast.step / np.timedelta64(1, 's'):g} s "
            "apart (the model's step)"
        )
    # The one-step forecast of rows input_len..N-1, each from the input_len rows before it.
    rolling = forecast_rows(forecast, series, input_len, input_len, 1)
    ahead = np.asarray(forecast.predict(series.timestamps, series.kpis, horizon), dtype=np.float64)
    if ahead.shape != (horizon, len(KPI_COLUMNS)):
        raise UnusableBatch(f"the model answered shape {ahead.shape} for a horizon of {horizon}")
    if not (np.isfinite(rolling.predicted).all() and np.isfinite(ahead).all()):
        raise UnusableBatch("the model's forecast of this split is not finite")
    forecasts = np.full((rows + horizon, len(KPI_COLUMNS)), np.nan)
    forecasts[input_len:rows] = rolling.predicted
    forecasts[rows:] = ahead
    actuals = np.full((rows + horizon, len(KPI_COLUMNS)), np.nan)
    actuals[:rows] = series.kpis
    times = np.concatenate(
        [series.timestamps, future_timestamps(series.timestamps[-1], forecast.step, horizon)]
    )
    frame = pd.DataFrame({TIME: times, KIND: [ROLLING] * rows + [HORIZON] * horizon})
    for i, kpi in enumerate(KPI_COLUMNS):
        frame[actual_column(kpi)] = actuals[:, i]
    for i, kpi in enumerate(KPI_COLUMNS):
        frame[forecast_column(kpi)] = forecasts[:, i]
    return frame


def batch_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """The batch's RMSE of `down` and `up` against the actuals (original units) on every rolling
    row that has a forecast, next to persistence's (each row forecast by the row before it), and
    the number of rows scored. ValueError when no row has both."""
    rolling = frame[frame[KIND] == ROLLING].reset_index(drop=True)
    scored = rolling[forecast_column(SCORED_KPIS[0])].notna().to_numpy().copy()
    # Persistence needs the row before; the first row of a split never has a forecast anyway.
    scored[0] = False
    if not scored.any():
        raise ValueError("no row of the batch has both a forecast and an actual value")
    previous = np.flatnonzero(scored) - 1
    actual = rolling.loc[scored, [actual_column(k) for k in SCORED_KPIS]].to_numpy(dtype=np.float64)
    predicted = rolling.loc[scored, [forecast_column(k) for k in SCORED_KPIS]].to_numpy(dtype=np.float64)
    baseline = rolling.loc[previous, [actual_column(k) for k in SCORED_KPIS]].to_numpy(dtype=np.float64)
    model = per_column_rmse(predicted, actual)
    persistence = per_column_rmse(baseline, actual)
    metrics = {"batch_rows": float(int(scored.sum()))}
    for i, kpi in enumerate(SCORED_KPIS):
        metrics[f"batch_rmse_{kpi}"] = float(model[i])
        metrics[f"baseline_batch_rmse_{kpi}"] = float(persistence[i])
    return metrics


def horizon_of(frame: pd.DataFrame) -> int:
    return int((frame[KIND] == HORIZON).sum())


def rows_of(frame: pd.DataFrame) -> int:
    return int((frame[KIND] == ROLLING).sum())
