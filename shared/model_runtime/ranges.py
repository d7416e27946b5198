"""The ranges a KPI can take: the physical floor of forecasts, the plausible span of inputs.

Every KPI of the contract counts or averages non-negative quantities (bits, users, resource
blocks, modulation indices and their variances), so a forecast below zero is never right and is
clipped. What counts as a plausible input is derived from the train split of the model being
served, through its scaler: up to `PLAUSIBLE_SPAN_FACTOR` train ranges above the train maximum.
Traffic grows and bursts, so the margin is wide; a value beyond it is one the model has never
seen anything like, and answering it would be extrapolation dressed up as a forecast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.data import MinMaxScaler

KPI_FLOOR = 0.0
PLAUSIBLE_SPAN_FACTOR = 10.0


@dataclass(frozen=True)
class OutOfRange:
    """The first offending value of one column."""

    column: str
    row: int
    value: float
    low: float
    high: float

    def describe(self) -> str:
        return (
            f"column {self.column!r} row {self.row}: {self.value:.6g} is outside the plausible range "
            f"[{self.low:.6g}, {self.high:.6g}] (derived from the model's training data)"
        )


@dataclass(frozen=True)
class KpiRanges:
    """Per-column floor and plausible ceiling, in original units, in the scaler's column order."""

    columns: tuple[str, ...]
    low: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]

    @classmethod
    def from_scaler(cls, scaler: MinMaxScaler) -> KpiRanges:
        lo = np.asarray(scaler.data_min, dtype=np.float64)
        span = np.asarray(scaler.data_range, dtype=np.float64)
        low = np.full(len(scaler.columns), KPI_FLOOR)
        high = lo + span * (1.0 + PLAUSIBLE_SPAN_FACTOR)
        return cls(tuple(scaler.columns), low, high)

    def clip(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Forecasts (rows, columns) with every value raised to its column's physical floor."""
        return np.maximum(np.asarray(values, dtype=np.float64), self.low)

    def violations(self, values: npt.ArrayLike, columns: Sequence[str] | None = None) -> list[OutOfRange]:
        """For each column with a value outside [low, high], the first such value."""
        array = np.asarray(values, dtype=np.float64)
        names = tuple(columns) if columns is not None else self.columns
        bad = (array < self.low) | (array > self.high)
        found: list[OutOfRange] = []
        for index in np.flatnonzero(bad.any(axis=0)):
            row = int(np.flatnonzero(bad[:, index])[0])
            found.append(
                OutOfRange(
                    names[index],
                    row,
                    float(array[row, index]),
                    float(self.low[index]),
                    float(self.high[index]),
                )
            )
        return found
