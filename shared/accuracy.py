"""Forecast scoring shared by the trainers, the evaluator and inference.

Every model is scored the same way (DESIGN.md): one step ahead on the same test rows, in the
train-fit MinMax units averaged over the 11 KPIs, next to the persistence baseline (the last
observed value) on the same rows, plus per-KPI errors in original units.

"Averaged over the KPIs" means: compute the error of each KPI column, then take the mean of
those 11 numbers. For MSE and MAE that equals the mean over every cell; for RMSE it is the mean
of per-KPI RMSEs (not the square root of the pooled MSE), so one badly scaled KPI cannot hide.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from shared.data import KPI_COLUMNS, MinMaxScaler

Floats = npt.NDArray[np.float64]

# Metrics every SUCCESS event must carry (DESIGN.md, model-training events).
SUMMARY_METRICS: tuple[str, ...] = (
    "test_rmse",
    "test_mae",
    "test_mse",
    "baseline_test_rmse",
    "baseline_test_mae",
    "baseline_test_mse",
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
) -> dict[str, float]:
    """All test metrics of the contract from scaled (rows, 11) arrays on the same rows.

    Returns test_rmse/mae/mse and baseline_test_rmse/mae/mse in scaled units (mean over KPIs),
    then test_rmse_<kpi>, test_mae_<kpi>, baseline_test_rmse_<kpi>, baseline_test_mae_<kpi> in
    original units (inverted with the train-fit scaler).
    """
    pred, true = _as_2d(predicted, actual)
    base, _ = _as_2d(baseline, actual)
    if pred.shape[1] != len(columns):
        raise ValueError(f"expected {len(columns)} columns, got {pred.shape[1]}")
    if not np.all(np.isfinite(pred)):
        raise ValueError("predictions contain NaN or infinite values")
    out: dict[str, float] = {
        "test_rmse": rmse(pred, true),
        "test_mae": mae(pred, true),
        "test_mse": mse(pred, true),
        "baseline_test_rmse": rmse(base, true),
        "baseline_test_mae": mae(base, true),
        "baseline_test_mse": mse(base, true),
    }
    pred_orig = scaler.inverse_array(pred)
    true_orig = scaler.inverse_array(true)
    base_orig = scaler.inverse_array(base)
    model_rmse = per_column_rmse(pred_orig, true_orig)
    model_mae = per_column_mae(pred_orig, true_orig)
    base_rmse = per_column_rmse(base_orig, true_orig)
    base_mae = per_column_mae(base_orig, true_orig)
    for i, column in enumerate(columns):
        out[f"test_rmse_{column}"] = float(model_rmse[i])
        out[f"test_mae_{column}"] = float(model_mae[i])
        out[f"baseline_test_rmse_{column}"] = float(base_rmse[i])
        out[f"baseline_test_mae_{column}"] = float(base_mae[i])
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
