"""What every model runtime shares: the `Forecast` a loaded model is, and numpy helpers for windows.

Pure functions over numpy arrays: no I/O, no shared mutable state, so the inference service, the
trainers' scoring, MLflow models and the tests all compute predictions the same way. Nothing here
imports torch or prophet: the Prophet trainer and a served Prophet import this module and must
stay free of torch (the recurrent runtime is shared.model_runtime.recurrent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shared.data import KPI_COLUMNS, TIME_FEATURES, MinMaxScaler

_TWO_PI = 2.0 * math.pi
_NS_PER_MINUTE = 60 * 1_000_000_000
_MINUTES_PER_DAY = 1440.0
# 1970-01-01 was a Thursday; pandas numbers Monday as 0, so Thursday is 3.
_EPOCH_DAY_OF_WEEK = 3

# What a forecast answers: (timestamps (n,) datetime64, KPIs (n, 11) original units, horizon).
Window = tuple[np.ndarray, np.ndarray, int]


class Forecast(Protocol):
    """A loaded model ready to answer: what the inference service holds and swaps."""

    @property
    def input_seq_len(self) -> int: ...

    @property
    def step(self) -> np.timedelta64: ...

    def predict(self, timestamps: np.ndarray, kpis: np.ndarray, horizon: int) -> np.ndarray: ...

    def predict_many(self, windows: Sequence[Window]) -> list[np.ndarray]: ...


def time_feature_array(timestamps: np.ndarray) -> np.ndarray:
    """The six cyclical time features of `shared.data.time_features`, computed with numpy only.

    `timestamps` is a datetime64 array (UTC-naive). Returns float64 of shape (n, 6) in
    TIME_FEATURES order. Kept numerically identical to the pandas version (tested) because
    that one is what the models were trained on; this one is ~20x faster on short windows.
    """
    ns = np.asarray(timestamps, dtype="datetime64[ns]")
    days = ns.astype("datetime64[D]")
    minute = (ns - days).astype(np.int64) / _NS_PER_MINUTE
    day_fraction = minute / _MINUTES_PER_DAY
    day_of_week = (days.astype(np.int64) + _EPOCH_DAY_OF_WEEK) % 7
    day_of_year = (days - days.astype("datetime64[Y]")).astype(np.int64) + 1
    week = (day_of_week.astype(np.float64) + day_fraction) / 7.0
    year = (day_of_year.astype(np.float64) - 1.0 + day_fraction) / 365.25
    out = np.empty((ns.shape[0], len(TIME_FEATURES)), dtype=np.float64)
    out[:, 0] = np.sin(_TWO_PI * day_fraction)
    out[:, 1] = np.cos(_TWO_PI * day_fraction)
    out[:, 2] = np.sin(_TWO_PI * week)
    out[:, 3] = np.cos(_TWO_PI * week)
    out[:, 4] = np.sin(_TWO_PI * year)
    out[:, 5] = np.cos(_TWO_PI * year)
    return out


def future_timestamps(last: np.datetime64, step: np.timedelta64, horizon: int) -> npt.NDArray[np.datetime64]:
    """`horizon` timestamps at `step` after `last` (datetime64[ns])."""
    start: npt.NDArray[np.datetime64] = np.asarray(last, dtype="datetime64[ns]")
    offsets = np.arange(1, horizon + 1, dtype=np.int64) * np.timedelta64(step, "ns")
    return start + offsets


def kpi_scaler_arrays(scaler: MinMaxScaler) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(data_min, data_range) in KPI_COLUMNS order; refuses a scaler over other columns."""
    if tuple(scaler.columns) != KPI_COLUMNS:
        raise ValueError(f"scaler columns {list(scaler.columns)} are not the KPI columns {list(KPI_COLUMNS)}")
    return np.asarray(scaler.data_min, dtype=np.float64), np.asarray(scaler.data_range, dtype=np.float64)
