"""Metric functions against hand-computed values, and the persistence baseline's rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.accuracy import (
    SUMMARY_METRICS,
    evaluation_rows,
    forecast_metrics,
    forecast_metrics_from_original,
    mae,
    mse,
    persistence_forecast,
    relative_improvement,
    rmse,
)
from shared.data import KPI_COLUMNS, MinMaxScaler


def test_single_column_errors_match_hand_computation() -> None:
    predicted = np.array([1.0, 2.0, 3.0, 4.0])
    actual = np.array([2.0, 2.0, 1.0, 4.0])
    # errors: -1, 0, 2, 0 -> squared 1, 0, 4, 0
    assert mse(predicted, actual) == pytest.approx(5 / 4)
    assert rmse(predicted, actual) == pytest.approx(math.sqrt(5 / 4))
    assert mae(predicted, actual) == pytest.approx(3 / 4)


def test_rmse_is_the_mean_of_per_column_rmses_not_the_pooled_root() -> None:
    predicted = np.array([[0.0, 0.0], [0.0, 0.0]])
    actual = np.array([[3.0, 0.0], [3.0, 4.0]])
    # column 0: errors 3, 3 -> rmse 3; column 1: errors 0, 4 -> rmse sqrt(8)
    assert rmse(predicted, actual) == pytest.approx((3.0 + math.sqrt(8.0)) / 2)
    assert mse(predicted, actual) == pytest.approx((9 + 9 + 0 + 16) / 4)
    assert mae(predicted, actual) == pytest.approx((3 + 3 + 0 + 4) / 4)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        rmse(np.zeros((3, 2)), np.zeros((3, 3)))


def test_persistence_predicts_each_row_with_the_previous_one() -> None:
    values = np.arange(12, dtype=float).reshape(6, 2)
    baseline = persistence_forecast(values, input_len=3)
    actual, base2 = evaluation_rows(values, input_len=3)
    np.testing.assert_array_equal(actual, values[3:])
    np.testing.assert_array_equal(baseline, values[2:5])
    np.testing.assert_array_equal(base2, baseline)


def test_evaluation_rows_of_poblesec_sized_split_are_rows_10_to_3981() -> None:
    values = np.arange(3982, dtype=float)[:, None]
    actual, baseline = evaluation_rows(values, input_len=10)
    assert len(actual) == 3972
    assert actual[0, 0] == 10 and actual[-1, 0] == 3981
    assert baseline[0, 0] == 9 and baseline[-1, 0] == 3980


def test_forecast_metrics_reports_scaled_means_and_original_units_per_kpi() -> None:
    n = len(KPI_COLUMNS)
    scaler = MinMaxScaler(KPI_COLUMNS, tuple([0.0] * n), tuple([10.0] * (n - 1) + [2.0]))
    actual = np.full((4, n), 0.5)
    predicted = actual.copy()
    predicted[:, 0] += 0.1  # every prediction of `down` 0.1 too high (1.0 in original units)
    baseline = actual.copy()
    baseline[:, -1] -= 0.2  # persistence misses the last KPI by 0.2 (0.4 in original units)

    metrics = forecast_metrics(predicted, actual, baseline, scaler)

    assert len(metrics) == 6 + 4 * n
    assert metrics["test_rmse"] == pytest.approx(0.1 / n)
    assert metrics["test_mae"] == pytest.approx(0.1 / n)
    assert metrics["test_mse"] == pytest.approx(0.01 / n)
    assert metrics["baseline_test_rmse"] == pytest.approx(0.2 / n)
    assert metrics["test_rmse_down"] == pytest.approx(1.0)
    assert metrics["test_mae_down"] == pytest.approx(1.0)
    assert metrics["test_rmse_up"] == pytest.approx(0.0)
    assert metrics["baseline_test_rmse_rb_up_var"] == pytest.approx(0.4)
    assert metrics["baseline_test_mae_down"] == pytest.approx(0.0)


def _scaler_and_rows() -> tuple[MinMaxScaler, np.ndarray, np.ndarray, np.ndarray]:
    """Original-unit rows where the model misses `down` by 5 and persistence misses `up` by 2."""
    n = len(KPI_COLUMNS)
    scaler = MinMaxScaler(KPI_COLUMNS, tuple([100.0] * n), tuple([10.0] * n))
    actual = np.full((5, n), 105.0)
    predicted = actual.copy()
    predicted[:, 0] += 5.0
    baseline = actual.copy()
    baseline[:, 1] -= 2.0
    return scaler, predicted, actual, baseline


def test_a_family_from_original_units_takes_kpi_means_in_minmax_units_and_per_kpi_in_original() -> None:
    scaler, predicted, actual, baseline = _scaler_and_rows()
    n = len(KPI_COLUMNS)

    metrics = forecast_metrics_from_original(predicted, actual, baseline, scaler, prefix="val")

    assert metrics["val_rmse"] == pytest.approx(0.5 / n)  # 5 of a range of 10, in one KPI of 11
    assert metrics["val_mae"] == pytest.approx(0.5 / n)
    assert metrics["val_mse"] == pytest.approx(0.25 / n)
    assert metrics["baseline_val_rmse"] == pytest.approx(0.2 / n)
    assert metrics["val_rmse_down"] == pytest.approx(5.0)
    assert metrics["val_mae_down"] == pytest.approx(5.0)
    assert metrics["baseline_val_rmse_up"] == pytest.approx(2.0)
    assert metrics["baseline_val_mae_up"] == pytest.approx(2.0)
    assert metrics["val_rmse_up"] == 0.0 and metrics["baseline_val_rmse_down"] == 0.0
    assert not any(key.startswith(("test_", "baseline_test_")) for key in metrics)
    assert not any(key.startswith(("val_mse_", "baseline_val_mse_")) for key in metrics)


def test_scaled_and_original_inputs_give_the_same_family() -> None:
    scaler, predicted, actual, baseline = _scaler_and_rows()
    from_original = forecast_metrics_from_original(predicted, actual, baseline, scaler, prefix="test")
    transform = scaler.transform_array
    from_scaled = forecast_metrics(transform(predicted), transform(actual), transform(baseline), scaler)
    assert from_original.keys() == from_scaled.keys()
    for key, value in from_scaled.items():
        assert from_original[key] == pytest.approx(value, abs=1e-9), key


def test_a_family_limited_to_rmse_has_only_rmse_names() -> None:
    scaler, predicted, actual, baseline = _scaler_and_rows()

    metrics = forecast_metrics_from_original(
        predicted, actual, baseline, scaler, prefix="test_h30", errors=("rmse",)
    )

    expected = {"test_h30_rmse", "baseline_test_h30_rmse"}
    expected |= {f"{who}test_h30_rmse_{kpi}" for kpi in KPI_COLUMNS for who in ("", "baseline_")}
    assert set(metrics) == expected
    assert metrics["test_h30_rmse_down"] == pytest.approx(5.0)
    assert metrics["baseline_test_h30_rmse_up"] == pytest.approx(2.0)


def test_summary_metrics_are_the_validation_and_test_families_and_the_gated_kpis() -> None:
    scaler, predicted, actual, baseline = _scaler_and_rows()
    metrics = {
        **forecast_metrics_from_original(predicted, actual, baseline, scaler, prefix="val"),
        **forecast_metrics_from_original(predicted, actual, baseline, scaler, prefix="test"),
    }
    assert set(SUMMARY_METRICS) <= set(metrics)
    for family in ("val", "test"):
        for error in ("rmse", "mae", "mse"):
            assert f"{family}_{error}" in SUMMARY_METRICS
            assert f"baseline_{family}_{error}" in SUMMARY_METRICS
    for kpi in ("down", "up"):
        assert f"val_rmse_{kpi}" in SUMMARY_METRICS and f"baseline_val_rmse_{kpi}" in SUMMARY_METRICS


def test_forecast_metrics_refuses_non_finite_predictions() -> None:
    n = len(KPI_COLUMNS)
    scaler = MinMaxScaler(KPI_COLUMNS, tuple([0.0] * n), tuple([1.0] * n))
    predicted = np.zeros((3, n))
    predicted[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        forecast_metrics(predicted, np.zeros((3, n)), np.zeros((3, n)), scaler)


def test_relative_improvement() -> None:
    assert relative_improvement(81.0, 90.0) == pytest.approx(0.1)
    assert relative_improvement(100.0, 80.0) == pytest.approx(-0.25)
