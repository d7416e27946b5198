"""GRU/LSTM forecasts: a loaded network and its scaler turn a window into predictions.

Recurrent models see `input_seq_len` rows of the 17 feature columns (11 scaled KPIs then 6 time
features) and emit `output_seq_len` rows of the 11 scaled KPIs; horizons longer than that are
produced recursively, feeding predictions back with the time features of their own (future)
timestamps. Kept apart from shared.model_runtime.forecasting because it needs torch.

Two ways to evaluate, one window pipeline (`_forecast_windows`): `RecurrentForecast` runs one
model's network (what trainers score with), `RecurrentStack` runs many stations' networks of one
shape in one batched pass (shared.model_runtime.stacked_networks), each window with its own
member's network and scaler (what the inference service answers with).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from shared.data import KPI_COLUMNS, TIME_FEATURES, MinMaxScaler
from shared.model_runtime.forecasting import Window, kpi_scaler_arrays, time_feature_array
from shared.model_runtime.networks import RecurrentNetwork
from shared.model_runtime.ranges import KpiRanges
from shared.model_runtime.stacked_networks import StackedNetworks, stack_shape, stackable

Floats = npt.NDArray[np.float64]


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
        return self.predict_many([(timestamps, kpis, horizon)])[0]

    def predict_many(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """Several (timestamps, kpis, horizon) windows in one batched forward pass per step."""
        return forecast_recurrent_many(
            self.model,
            self.scaler,
            windows,
            step=self.step,
            input_seq_len=self.input_seq_len,
            output_seq_len=self.output_seq_len,
        )

    @property
    def stack_key(self) -> Hashable | None:
        """Forecasts with equal keys can share a `RecurrentStack`; None: served on its own."""
        if not stackable(self.model):
            return None
        assert isinstance(self.model, RecurrentNetwork)
        return ("recurrent", stack_shape(self.model.spec), self.input_seq_len, self.output_seq_len, self.step)

    @staticmethod
    def stack(forecasts: Sequence[RecurrentForecast]) -> RecurrentStack:
        return RecurrentStack(forecasts)


class RecurrentStack:
    """Several stations' RecurrentForecasts of one stack key, answering windows of any of them in
    one pass; immutable once built (a promotion builds a new stack)."""

    def __init__(self, forecasts: Sequence[RecurrentForecast]) -> None:
        keys = {forecast.stack_key for forecast in forecasts}
        if len(keys) != 1 or None in keys:
            raise ValueError(f"forecasts of different shapes cannot share a stack: {keys}")
        first = forecasts[0]
        self.members = tuple(forecasts)
        self.input_seq_len = first.input_seq_len
        self.output_seq_len = first.output_seq_len
        self.step = first.step
        self.networks = StackedNetworks([f.model for f in forecasts])  # type: ignore[misc]
        scalers = [kpi_scaler_arrays(f.scaler) for f in forecasts]
        self.lo = np.stack([lo for lo, _ in scalers])
        self.span = np.stack([span for _, span in scalers])
        self.low = np.stack([KpiRanges.from_scaler(f.scaler).low for f in forecasts])

    def predict_many(self, members: Sequence[int], windows: Sequence[Window]) -> list[np.ndarray]:
        """Window i answered by member `members[i]`, as that member's `predict_many` would."""
        rows = np.asarray(members, dtype=np.int64)
        return _forecast_windows(
            lambda x: self.networks.forward(members, x),
            windows,
            self.lo[rows, None],
            self.span[rows, None],
            self.low[rows, None],
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
    windows: Sequence[Window],
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
    lo, span = kpi_scaler_arrays(scaler)
    return _forecast_windows(
        model,
        windows,
        lo,
        span,
        KpiRanges.from_scaler(scaler).low,
        step=step,
        input_seq_len=input_seq_len,
        output_seq_len=output_seq_len,
    )


def _forecast_windows(
    network: Callable[[torch.Tensor], torch.Tensor],
    windows: Sequence[Window],
    lo: Floats,
    span: Floats,
    low: Floats,
    *,
    step: np.timedelta64,
    input_seq_len: int,
    output_seq_len: int,
) -> list[np.ndarray]:
    """Scale, add time features, run `network` recursively, unscale and clip at the floor.

    `lo`, `span` (the scaler) and `low` (the KPI floor, original units) are (11,) for one model
    or (len(windows), 1, 11), a row per window, for a stack.
    """
    if not windows:
        return []
    for timestamps, kpis, horizon in windows:
        if horizon < 1:
            raise ValueError("horizon must be at least 1")
        if len(timestamps) < input_seq_len or kpis.shape[0] != len(timestamps):
            raise ValueError(f"need at least {input_seq_len} rows of timestamps and KPIs")
    n_kpi = len(KPI_COLUMNS)
    # Fed-back steps are clipped too: a recursive forecast must not build on impossible values.
    floor = torch.from_numpy(((low - lo) / span).astype(np.float32))
    calls = -(-max(h for _, _, h in windows) // output_seq_len)
    ahead_len = calls * output_seq_len
    total = input_seq_len + ahead_len
    # One buffer holds every window and every fed-back prediction: no per-step concatenation.
    features = np.empty((len(windows), total, n_kpi + len(TIME_FEATURES)), dtype=np.float32)
    all_ts = np.empty((len(windows), total), dtype="datetime64[ns]")
    all_ts[:, :input_seq_len] = np.stack(
        [np.asarray(timestamps[-input_seq_len:], dtype="datetime64[ns]") for timestamps, _, _ in windows]
    )
    ahead = np.arange(1, ahead_len + 1, dtype=np.int64) * np.timedelta64(step, "ns")
    all_ts[:, input_seq_len:] = all_ts[:, input_seq_len - 1 : input_seq_len] + ahead
    recent = np.stack([np.asarray(kpis[-input_seq_len:], dtype=np.float64) for _, kpis, _ in windows])
    # Values far outside the training range overflow float32 to inf; the caller refuses a
    # non-finite forecast with a 4xx, so the overflow itself is not an error here.
    with np.errstate(over="ignore"):
        features[:, :input_seq_len, :n_kpi] = (recent - lo) / span
    features[:, :, n_kpi:] = time_feature_array(all_ts.reshape(-1)).reshape(len(windows), total, -1)
    with torch.inference_mode():
        buffer = torch.from_numpy(features)
        for call in range(calls):
            start = call * output_seq_len
            y = torch.maximum(network(buffer[:, start : start + input_seq_len]), floor)
            buffer[:, start + input_seq_len : start + input_seq_len + output_seq_len, :n_kpi] = y
    # Clipped again in original units: float32 rounding of the scaled floor can land just below it.
    out = np.maximum(features[:, input_seq_len:, :n_kpi].astype(np.float64) * span + lo, low)
    return [out[b, :horizon] for b, (_, _, horizon) in enumerate(windows)]
