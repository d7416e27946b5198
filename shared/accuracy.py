"""Forecast scoring shared by the trainers, the evaluator and inference.

Every model is scored the same way (DESIGN.md), each family next to the persistence baseline (the
last observed value) on the same rows:
- `val_*`: one step ahead on the validation period (the tail of the train split); it decides;
- `test_*`: one step ahead on the test split; it is reported, never used to choose;
- `test_h30_*`: the 30th step of a recursive forecast on the test split (one hour); reported.
Means over the KPIs are in the train-fit MinMax units; per-KPI errors are in original units.

"Averaged over the KPIs" means: compute the error of each KPI column, then take the mean of
those 11 numbers. For MSE and MAE that equals the mean over every cell; for RMSE it is the mean
of per-KPI RMSEs (not the square root of the pooled MSE), so one badly scaled KPI cannot hide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from shared.data import KPI_COLUMNS, MinMaxScaler

Floats = npt.NDArray[np.float64]
Error = Literal["rmse", "mae", "mse"]
ALL_ERRORS: tuple[Error, ...] = ("rmse", "mae", "mse")

# Metrics every SUCCESS event must carry (DESIGN.md, model-training events): the validation family
# the evaluator ranks and gates on, and the test family it reports.
SUMMARY_METRICS: tuple[str, ...] = (
    "val_rmse",
    "val_mae",
    "val_mse",
    "baseline_val_rmse",
    "baseline_val_mae",
    "baseline_val_mse",
    "test_rmse",
    "test_mae",
    "test_mse",
    "baseline_test_rmse",
    "baseline_test_mae",
    "baseline_test_mse",
    "val_rmse_down",
    "val_rmse_up",
    "baseline_val_rmse_down",
    "baseline_val_rmse_up",
)


def _as_2d(predicted: npt.ArrayLike, actual: npt.ArrayLike) -> tuple[Floats, Floats]:
    pred = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(actual, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"predicted shape {pred.shape} differs from actual shape {true.shape}")
    if pred.ndim == 1:
        pred, true = pred[:, None], true[:, None]
    if pred.ndim != 2 or pred.shape[0] == 0:
        raise ValueError(f"expected a non-empty (rows, columns) array, got shape {pred.shape}")
    return pred, true


def per_column_mse(predicted: npt.ArrayLike, actual: npt.ArrayLike) -> Floats:
    pred, true = _as_2d(predicted, actual)
    return np.asarray(np.mean((pred - true) ** 2, axis=0), dtype=np.float64)


def per_column_rmse(predicted: npt.ArrayLike, actual: npt.ArrayLike) -> Floats:
    return np.sqrt(per_column_mse(predicted, actual))


def per_column_mae(predicted: npt.ArrayLike, actual: npt.ArrayLike) -> Floats:
    pred, true = _as_2d(predicted, actual)
    return np.asarray(np.mean(np.abs(pred - true), axis=0), dtype=np.float64)


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean over columns of each column's RMSE."""
    return float(np.mean(per_column_rmse(predicted, actual)))


def mae(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean(per_column_mae(predicted, actual)))


def mse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean(per_column_mse(predicted, actual)))


def persistence_forecast(kpis: np.ndarray, input_len: int) -> np.ndarray:
    """The last-value forecast for rows input_len..N-1: row i is predicted by row i-1."""
    values = np.asarray(kpis, dtype=np.float64)
    if input_len < 1 or len(values) <= input_len:
        raise ValueError(f"need more than input_len={input_len} rows, got {len(values)}")
    return values[input_len - 1 : -1]


def forecast_metrics(
    predicted: np.ndarray,
    actual: np.ndarray,
    baseline: np.ndarray,
    scaler: MinMaxScaler,
    columns: Sequence[str] = KPI_COLUMNS,
    *,
    prefix: str = "test",
    errors: Sequence[Error] = ALL_ERRORS,
) -> dict[str, float]:
    """One metric family from scaled (rows, 11) arrays on the same rows.

    Returns <prefix>_<error> and baseline_<prefix>_<error> in scaled units (mean over KPIs) for
    each of `errors`, then <prefix>_<error>_<kpi> and baseline_<prefix>_<error>_<kpi> in original
    units (inverted with the train-fit scaler) for rmse and mae among them.
    """
    pred, true, base = _family_arrays(predicted, actual, baseline, columns)
    originals = (scaler.inverse_array(pred), scaler.inverse_array(true), scaler.inverse_array(base))
    return _family((pred, true, base), originals, columns, prefix, errors)


def forecast_metrics_from_original(
    predicted: np.ndarray,
    actual: np.ndarray,
    baseline: np.ndarray,
    scaler: MinMaxScaler,
    columns: Sequence[str] = KPI_COLUMNS,
    *,
    prefix: str,
    errors: Sequence[Error] = ALL_ERRORS,
) -> dict[str, float]:
    """`forecast_metrics` from arrays in original units (what a `Forecast` answers).

    The per-KPI errors are taken on the arrays as given; the means over KPIs on their
    scaler.transform_array, so they are comparable across KPIs of very different magnitude.
    """
    pred, true, base = _family_arrays(predicted, actual, baseline, columns)
    scaled = (scaler.transform_array(pred), scaler.transform_array(true), scaler.transform_array(base))
    return _family(scaled, (pred, true, base), columns, prefix, errors)


def _family_arrays(
    predicted: np.ndarray, actual: np.ndarray, baseline: np.ndarray, columns: Sequence[str]
) -> tuple[Floats, Floats, Floats]:
    pred, true = _as_2d(predicted, actual)
    base, _ = _as_2d(baseline, actual)
    if pred.shape[1] != len(columns):
        raise ValueError(f"expected {len(columns)} columns, got {pred.shape[1]}")
    if not np.all(np.isfinite(pred)):
        raise ValueError("predictions contain NaN or infinite values")
    return pred, true, base


_MEASURES = {"rmse": per_column_rmse, "mae": per_column_mae, "mse": per_column_mse}


def _family(
    scaled: tuple[Floats, Floats, Floats],
    original: tuple[Floats, Floats, Floats],
    columns: Sequence[str],
    prefix: str,
    errors: Sequence[Error],
) -> dict[str, float]:
    pred, true, base = scaled
    out: dict[str, float] = {}
    for error in errors:
        out[f"{prefix}_{error}"] = float(np.mean(_MEASURES[error](pred, true)))
    for error in errors:
        out[f"baseline_{prefix}_{error}"] = float(np.mean(_MEASURES[error](base, true)))
    pred_orig, true_orig, base_orig = original
    # Per-KPI MSE in original units would square values of ~1e8: unreadable and never asked for.
    per_kpi = [e for e in errors if e != "mse"]
    model = {e: _MEASURES[e](pred_orig, true_orig) for e in per_kpi}
    persistence = {e: _MEASURES[e](base_orig, true_orig) for e in per_kpi}
    for i, column in enumerate(columns):
        for error in per_kpi:
            out[f"{prefix}_{error}_{column}"] = float(model[error][i])
        for error in per_kpi:
            out[f"baseline_{prefix}_{error}_{column}"] = float(persistence[error][i])
    return out


def relative_improvement(model_error: float, baseline_error: float) -> float:
    """Fraction by which `model_error` is below `baseline_error` (0.1 = 10 % better)."""
    if baseline_error <= 0:
        raise ValueError("baseline error must be positive")
    return 1.0 - model_error / baseline_error


def evaluation_rows(test_kpis: np.ndarray, input_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows every model is scored on and their persistence forecast.

    For a test split of N rows these are rows input_len..N-1 (the first row that has a full
    input window before it, to the end), one step ahead. Returns (actual, baseline), both
    (N - input_len, n_kpis).
    """
    values = np.asarray(test_kpis, dtype=np.float64)
    return values[input_len:], persistence_forecast(values, input_len)
