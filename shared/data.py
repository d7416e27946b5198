"""The data contract every stage shares: columns, time features, the scaler and windows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

# The column names live in shared.columns, which imports nothing: the load test uses them too
# and its image carries neither numpy nor pandas. Re-exported here for the stages.
from shared.columns import FEATURE_COLUMNS as FEATURE_COLUMNS
from shared.columns import KPI_COLUMNS as KPI_COLUMNS
from shared.columns import TIME_COLUMN as TIME_COLUMN
from shared.columns import TIME_FEATURES as TIME_FEATURES

STEP = pd.Timedelta(minutes=2)

_MINUTES_PER_DAY = 1440.0


def time_features(timestamps: pd.DatetimeIndex | Sequence[pd.Timestamp]) -> pd.DataFrame:
    """Cyclical encodings of minute of day (1440 min), day of week (7 d), day of year (365.25 d)."""
    index = pd.DatetimeIndex(timestamps)
    minute = (index.hour * 60 + index.minute + index.second / 60.0).to_numpy(dtype=float)
    day_fraction = minute / _MINUTES_PER_DAY
    week = (index.day_of_week.to_numpy(dtype=float) + day_fraction) / 7.0
    year = (index.day_of_year.to_numpy(dtype=float) - 1.0 + day_fraction) / 365.25
    two_pi = 2.0 * math.pi
    return pd.DataFrame(
        {
            "min_of_day_sin": np.sin(two_pi * day_fraction),
            "min_of_day_cos": np.cos(two_pi * day_fraction),
            "day_of_week_sin": np.sin(two_pi * week),
            "day_of_week_cos": np.cos(two_pi * week),
            "day_of_year_sin": np.sin(two_pi * year),
            "day_of_year_cos": np.cos(two_pi * year),
        },
        index=index,
    )


@dataclass(frozen=True)
class MinMaxScaler:
    """Per-column min-max scaling fitted on the train split, stored as plain JSON numbers.

    A column whose range is zero or not finite keeps scale 1 so that scaling stays finite and
    invertible (a constant column maps to 0).
    """

    columns: tuple[str, ...]
    data_min: tuple[float, ...]
    data_range: tuple[float, ...]

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: Sequence[str] = KPI_COLUMNS) -> MinMaxScaler:
        values = frame.loc[:, list(columns)].to_numpy(dtype=np.float64)
        lo = np.nanmin(values, axis=0)
        hi = np.nanmax(values, axis=0)
        span = hi - lo
        usable = np.isfinite(span) & (span > 0)
        span = np.where(usable, span, 1.0)
        lo = np.where(np.isfinite(lo), lo, 0.0)
        return cls(tuple(columns), tuple(float(v) for v in lo), tuple(float(v) for v in span))

    def _arrays(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        return np.asarray(self.data_min, dtype=np.float64), np.asarray(self.data_range, dtype=np.float64)

    def transform_array(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        lo, span = self._arrays()
        return (np.asarray(values, dtype=np.float64) - lo) / span

    def inverse_array(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        lo, span = self._arrays()
        return np.asarray(values, dtype=np.float64) * span + lo

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        out.loc[:, list(self.columns)] = self.transform_array(frame.loc[:, list(self.columns)])
        return out

    def inverse_transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        out.loc[:, list(self.columns)] = self.inverse_array(frame.loc[:, list(self.columns)])
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": "minmax",
            "columns": list(self.columns),
            "data_min": list(self.data_min),
            "data_range": list(self.data_range),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> MinMaxScaler:
        """Rebuild from `to_dict` output; ValueError names what is missing or malformed."""
        if data.get("kind") != "minmax":
            raise ValueError(f"unknown scaler kind {data.get('kind')!r}")
        columns = tuple(str(c) for c in _json_list(data, "columns"))
        lo = tuple(_json_number(v) for v in _json_list(data, "data_min"))
        span = tuple(_json_number(v) for v in _json_list(data, "data_range"))
        if not (len(columns) == len(lo) == len(span)):
            raise ValueError("scaler columns, data_min and data_range differ in length")
        if not all(math.isfinite(v) for v in lo + span) or any(v <= 0 for v in span):
            raise ValueError("scaler parameters must be finite with positive ranges")
        return cls(columns, lo, span)


def _json_list(data: Mapping[str, object], key: str) -> list[object]:
    value = data.get(key)
    if not isinstance(value, list):
        raise ValueError(f"scaler {key} must be a list, got {type(value).__name__}")
    return value


def _json_number(value: object) -> float:
    # bool is an int to Python but never a scaler parameter; strings would parse but are not numbers.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"scaler parameter {value!r} is not a number")
    return float(value)


def make_windows(
    features: np.ndarray, targets: np.ndarray, input_len: int, output_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Slide over time: X[i] = features[i : i+input_len], Y[i] = targets[i+input_len : +output_len].

    Returns X of shape (n, input_len, n_features) and Y of shape (n, output_len, n_targets),
    n = rows - input_len - output_len + 1 (0 when there are too few rows).
    """
    if input_len < 1 or output_len < 1:
        raise ValueError("input_len and output_len must be positive")
    rows = len(features)
    if len(targets) != rows:
        raise ValueError("features and targets differ in length")
    count = rows - input_len - output_len + 1
    if count <= 0:
        return (
            np.empty((0, input_len, features.shape[1]), dtype=features.dtype),
            np.empty((0, output_len, targets.shape[1]), dtype=targets.dtype),
        )
    x_index = np.arange(input_len)[None, :] + np.arange(count)[:, None]
    y_index = np.arange(output_len)[None, :] + (np.arange(count) + input_len)[:, None]
    return features[x_index], targets[y_index]


def validation_start(rows: int, fraction: float, output_len: int) -> int:
    """First row of the validation period: the tail of a train split of `rows` rows.

    The tail is `max(output_len, round(rows * fraction))` rows, so at least one full target always
    lies in it. Every trainer fits only on the rows before the returned index; its predictions of
    the rows from it on decide early stopping, the model choice and the skill gate. Returns 0 when
    the split is no longer than the tail: the caller decides whether that is enough to train on.
    """
    if rows < 0:
        raise ValueError(f"rows must not be negative, got {rows}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction}")
    if output_len < 1:
        raise ValueError(f"output_len must be positive, got {output_len}")
    return max(0, rows - max(output_len, round(rows * fraction)))
