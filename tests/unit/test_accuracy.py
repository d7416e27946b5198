"""Metric functions against hand-computed values, and the persistence baseline's rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.accuracy import (
    SUMMARY_METRICS,
    evaluation_rows,
    forecast_metrics,
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

    for key in SUMMARY_METRICS:
        assert key in metrics
    assert metrics["test_rmse"] == pytest.approx(0.1 / n)
    assert metrics["test_mae"] == pytest.approx(0.1 / n)
    assert metrics["test_mse"] == pytest.approx(0.01 / n)
    assert metrics["baseline_test_rmse"] == pytest.approx(0.2 / n)
    assert metrics["test_rmse_down"] == pytest.approx(1.0)
    assert metrics["test_mae_down"] == pytest.approx(1.0)
    assert metrics["test_rmse_up"] == pytest.approx(0.0)
    assert metrics["baseline_test_rmse_rb_up_var"] == pytest.approx(0.4)
    assert metrics["baseline_test_mae_down"] == pytest.approx(0.0)


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
