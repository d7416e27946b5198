"""GRU/LSTM forecasts: a loaded network and its scaler turn a window into predictions.

Recurrent models see `input_seq_len` rows of the 17 feature columns (11 scaled KPIs then 6 time
features) and emit `output_seq_len` rows of the 11 scaled KPIs; horizons longer than that are
produced recursively, feeding predictions back with the time features of their own (future)
timestamps. Kept apart from shared.model_runtime.forecasting because it needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shared.data import KPI_COLUMNS, TIME_FEATURES, MinMaxScaler
from shared.model_runtime.forecasting import future_timestamps, kpi_scaler_arrays, time_feature_array
from shared.model_runtime.ranges import KpiRanges


@dataclass(frozen=True)
class RecurrentForecast:
    """A loaded GRU/LSTM with its scaler; immutable, so concurrent requests may share it."""

    model: torch.nn.Module
    scaler: MinMaxScaler
    input_seq_len: int
    output_seq_len: int
    step: np.timedelta64

    def predict(self, timestamps: np.ndarray, kpis: np.ndarray, horizon: int) -> np.ndarray:
        """`horizon` rows of the 11 KPIs (original units) after the last of `timestamps`."""
        return forecast_recurrent(
            self.model,
            self.scaler,
            timestamps,
            kpis,
            horizon,
            step=self.step,
            input_seq_len=self.input_seq_len,
            output_seq_len=self.output_seq_len,
        )

    def predict_many(self, windows: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> list[np.ndarray]:
        """Several (timestamps, kpis, horizon) windows in one batched forward pass per step."""
        return forecast_recurrent_many(
            self.model,
            self.scaler,
            windows,
            step=self.step,
            input_seq_len=self.input_seq_len,
            output_seq_len=self.output_seq_len,
        )


def forecast_recurrent(
    model: torch.nn.Module,
    scaler: MinMaxScaler,
    timestamps: np.ndarray,
    kpis: np.ndarray,
    horizon: int,
    *,
    step: np.timedelta64,
    input_seq_len: int,
    output_seq_len: int,
) -> np.ndarray:
    """Predict `horizon` rows of the 11 KPIs (original units) after the last timestamp.

    `timestamps` (n,) datetime64 and `kpis` (n, 11) float64 in original units, n >= input_seq_len,
    already validated (ordered, evenly spaced at `step`, finite). Only the last input_seq_len rows
    are used. Each model call yields output_seq_len rows; they are fed back until `horizon` rows.
    """
    return forecast_recurrent_many(
        model,
        scaler,
        [(timestamps, kpis, horizon)],
        step=step,
        input_seq_len=input_seq_len,
        output_seq_len=output_seq_len,
    )[0]


def forecast_recurrent_many(
    model: torch.nn.Module,
    scaler: MinMaxScaler,
    windows: Sequence[tuple[np.ndarray, np.ndarray, int]],
    *,
    step: np.timedelta64,
    input_seq_len: int,
    output_seq_len: int,
) -> list[np.ndarray]:
    """`forecast_recurrent` for several (timestamps, kpis, horizon) windows in one batch.

    On a CPU a GRU/LSTM forward pass over one short window is dominated by per-call overhead, so
    a batch of 20 windows costs about as much as one: the service batches concurrent requests.
    Windows with shorter horizons ride along in later recursive calls and are cut at the end.
    """
    if not windows:
        return []
    for timestamps, kpis, horizon in windows:
        if horizon < 1:
            raise ValueError("horizon must be at least 1")
        if len(timestamps) < input_seq_len or kpis.shape[0] != len(timestamps):
            raise ValueError(f"need at least {input_seq_len} rows of timestamps and KPIs")
    lo, span = kpi_scaler_arrays(scaler)
    # Fed-back steps are clipped too: a recursive forecast must not build on impossible values.
    ranges = KpiRanges.from_scaler(scaler)
    floor = torch.from_numpy(((ranges.low - lo) / span).astype(np.float32))
    n_kpi = len(KPI_COLUMNS)
    calls = -(-max(h for _, _, h in windows) // output_seq_len)
    ahead_len = calls * output_seq_len
    total = input_seq_len + ahead_len
    # One buffer holds every window and every fed-back prediction: no per-step concatenation.
    features = np.empty((len(windows), total, n_kpi + len(TIME_FEATURES)), dtype=np.float32)
    all_ts = np.empty((len(windows), total), dtype="datetime64[ns]")
    for b, (timestamps, kpis, _) in enumerate(windows):
        window_ts = np.asarray(timestamps[-input_seq_len:], dtype="datetime64[ns]")
        all_ts[b, :input_seq_len] = window_ts
        all_ts[b, input_seq_len:] = future_timestamps(window_ts[-1], step, ahead_len)
        # Values far outside the training range overflow float32 to inf; the caller refuses a
        # non-finite forecast with a 4xx, so the overflow itself is not an error here.
        with np.errstate(over="ignore"):
            features[b, :input_seq_len, :n_kpi] = (
                np.asarray(kpis[-input_seq_len:], dtype=np.float64) - lo
            ) / span
    features[:, :, n_kpi:] = time_feature_array(all_ts.reshape(-1)).reshape(len(windows), total, -1)
    with torch.inference_mode():
        buffer = torch.from_numpy(features)
        for call in range(calls):
            start = call * output_seq_len
            y = torch.maximum(model(buffer[:, start : start + input_seq_len]), floor)
            buffer[:, start + input_seq_len : start + input_seq_len + output_seq_len, :n_kpi] = y
    # Clipped again in original units: float32 rounding of the scaled floor can land just below it.
    out = ranges.clip(features[:, input_seq_len:, :n_kpi].astype(np.float64) * span + lo)
    return [out[b, :horizon] for b, (_, _, horizon) in enumerate(windows)]
