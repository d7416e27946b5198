"""The data contract: time features, the scaler and window alignment."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from shared.data import (
    FEATURE_COLUMNS,
    KPI_COLUMNS,
    STEP,
    TIME_FEATURES,
    MinMaxScaler,
    make_windows,
    time_features,
    validation_start,
)
from shared.processed import ProcessedMeta, SourceObjects, SplitRows


def test_feature_columns_are_the_eleven_kpis_then_six_time_features() -> None:
    assert len(KPI_COLUMNS) == 11 and len(TIME_FEATURES) == 6
    assert FEATURE_COLUMNS == KPI_COLUMNS + TIME_FEATURES
    assert KPI_COLUMNS[:2] == ("down", "up")
    assert STEP.total_seconds() == 120


def test_time_features_at_known_instants() -> None:
    # 2018-01-01 was a Monday: day of week 0, day of year 1, midnight.
    stamps = pd.DatetimeIndex(["2018-01-01 00:00", "2018-01-01 06:00", "2018-01-01 12:00"])
    features = time_features(stamps)

    assert list(features.columns) == list(TIME_FEATURES)
    assert features.index.equals(stamps)
    midnight, six, noon = features.to_dict("records")
    assert midnight == pytest.approx(
        {
            "min_of_day_sin": 0.0,
            "min_of_day_cos": 1.0,
            "day_of_week_sin": 0.0,
            "day_of_week_cos": 1.0,
            "day_of_year_sin": 0.0,
            "day_of_year_cos": 1.0,
        },
        abs=1e-12,
    )
    assert (six["min_of_day_sin"], six["min_of_day_cos"]) == pytest.approx((1.0, 0.0), abs=1e-12)
    assert (noon["min_of_day_sin"], noon["min_of_day_cos"]) == pytest.approx((0.0, -1.0), abs=1e-12)
    # Six hours is 1/28 of a week.
    assert six["day_of_week_sin"] == pytest.approx(math.sin(2 * math.pi / 28), abs=1e-12)


def test_time_features_repeat_with_their_periods_and_lie_on_the_unit_circle() -> None:
    start = pd.Timestamp("2018-02-05 23:40")
    base = time_features(pd.date_range(start, periods=50, freq=STEP))
    next_day = time_features(pd.date_range(start + pd.Timedelta(days=1), periods=50, freq=STEP))
    next_week = time_features(pd.date_range(start + pd.Timedelta(days=7), periods=50, freq=STEP))

    day_cols = ["min_of_day_sin", "min_of_day_cos"]
    week_cols = ["day_of_week_sin", "day_of_week_cos"]
    np.testing.assert_allclose(next_day[day_cols].to_numpy(), base[day_cols].to_numpy(), atol=1e-9)
    np.testing.assert_allclose(next_week[week_cols].to_numpy(), base[week_cols].to_numpy(), atol=1e-9)
    assert not np.allclose(next_day[week_cols].to_numpy(), base[week_cols].to_numpy())
    for name in ("min_of_day", "day_of_week", "day_of_year"):
        radius = base[f"{name}_sin"] ** 2 + base[f"{name}_cos"] ** 2
        np.testing.assert_allclose(radius.to_numpy(), 1.0, atol=1e-12)


def kpi_frame(rows: int = 200, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 1e5, size=(rows, len(KPI_COLUMNS)))
    return pd.DataFrame(values, columns=list(KPI_COLUMNS))


def test_scaler_maps_train_to_unit_range_and_inverts_exactly() -> None:
    frame = kpi_frame()
    scaler = MinMaxScaler.fit(frame)

    scaled = scaler.transform_array(frame.to_numpy())
    assert scaled.min(axis=0) == pytest.approx(np.zeros(11), abs=1e-12)
    assert scaled.max(axis=0) == pytest.approx(np.ones(11), abs=1e-12)
    np.testing.assert_allclose(scaler.inverse_array(scaled), frame.to_numpy(), rtol=1e-12)
    pd.testing.assert_frame_equal(scaler.inverse_transform(scaler.transform(frame)), frame, rtol=1e-12)


def test_scaler_stays_finite_and_invertible_for_a_constant_column() -> None:
    frame = kpi_frame()
    frame["mcs_up_var"] = 4.5
    scaler = MinMaxScaler.fit(frame)

    scaled = scaler.transform_array(frame.to_numpy())
    assert np.isfinite(scaled).all()
    column = KPI_COLUMNS.index("mcs_up_var")
    assert (scaled[:, column] == 0.0).all()
    np.testing.assert_allclose(scaler.inverse_array(scaled)[:, column], 4.5, rtol=0)


def test_scaler_round_trips_a_column_of_variance_1e8_within_1e9_relative() -> None:
    frame = kpi_frame()
    rng = np.random.default_rng(11)
    frame["rb_up_var"] = 7.0 + rng.normal(0.0, 1e-4, size=len(frame))  # std 1e-4: variance 1e-8
    assert frame["rb_up_var"].var() == pytest.approx(1e-8, rel=0.3)
    scaler = MinMaxScaler.fit(frame)

    scaled = scaler.transform_array(frame.to_numpy())
    column = KPI_COLUMNS.index("rb_up_var")
    assert np.isfinite(scaled).all()
    assert scaled[:, column].min() == pytest.approx(0.0, abs=1e-9)
    assert scaled[:, column].max() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(scaler.inverse_array(scaled)[:, column], frame["rb_up_var"], rtol=1e-9)


def test_scaler_survives_json_and_refuses_corrupt_parameters() -> None:
    scaler = MinMaxScaler.fit(kpi_frame())

    restored = MinMaxScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert restored == scaler

    good = scaler.to_dict()
    with pytest.raises(ValueError, match="unknown scaler kind"):
        MinMaxScaler.from_dict({**good, "kind": "standard"})
    with pytest.raises(ValueError, match="positive ranges"):
        MinMaxScaler.from_dict({**good, "data_range": [0.0] * 11})
    with pytest.raises(ValueError, match="finite"):
        MinMaxScaler.from_dict({**good, "data_min": [float("nan")] * 11})
    with pytest.raises(ValueError, match="differ in length"):
        MinMaxScaler.from_dict({**good, "columns": list(KPI_COLUMNS[:10])})
    # Whatever a corrupt file holds, the caller sees a ValueError naming it, never a KeyError.
    with pytest.raises(ValueError, match="data_range must be a list"):
        MinMaxScaler.from_dict({k: v for k, v in good.items() if k != "data_range"})
    with pytest.raises(ValueError, match="not a number"):
        MinMaxScaler.from_dict({**good, "data_min": ["0"] * 11})


def test_processed_meta_round_trips_under_the_json_names_design_lists() -> None:
    scaler = MinMaxScaler.fit(kpi_frame())
    meta = ProcessedMeta(
        config_hash="f" * 64,
        dataset="PobleSec",
        identifier="cell-1",
        config={"dataset": "PobleSec", "extra_hash_salt": ""},
        source_digests={"PobleSec.csv": "sha256:00"},
        source_objects=SourceObjects(bucket="dataset", train="PobleSec.csv", test="PobleSec_test.csv"),
        columns=FEATURE_COLUMNS,
        rows=SplitRows(train=100, test=20),
        scaler=scaler,
        step_seconds=120,
        repairs={"train": {"nan_cells": 0}},
        sampling={"train": {"rows": 100}},
        created_at=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
    )
    stored = json.loads(json.dumps(meta.model_dump(mode="json")))
    assert set(stored) >= {
        "config",
        "config_hash",
        "columns",
        "rows",
        "scaler",
        "source_digests",
        "created_at",
    }
    assert stored["scaler"] == scaler.to_dict()
    assert stored["rows"] == {"train": 100, "test": 20}
    assert stored["columns"] == list(FEATURE_COLUMNS)
    again = ProcessedMeta.model_validate(stored)
    assert again == meta
    assert again.scaler == scaler


def test_windows_align_inputs_with_the_rows_that_follow_them() -> None:
    rows = 40
    features = np.arange(rows * 17, dtype=float).reshape(rows, 17)
    targets = features[:, :11]

    x, y = make_windows(features, targets, input_len=10, output_len=1)

    assert x.shape == (30, 10, 17) and y.shape == (30, 1, 11)
    for i in (0, 17, 29):
        np.testing.assert_array_equal(x[i], features[i : i + 10])
        np.testing.assert_array_equal(y[i, 0], targets[i + 10])
    # One step ahead: the targets are rows INPUT_SEQ_LEN..N-1, every one exactly once.
    np.testing.assert_array_equal(y[:, 0, :], targets[10:])


def test_windows_for_the_poble_sec_test_split_score_rows_10_to_3981() -> None:
    rows = 3982
    row_ids = np.arange(rows, dtype=float)[:, None]
    features = np.repeat(row_ids, 17, axis=1)

    _, y = make_windows(features, features[:, :11], input_len=10, output_len=1)

    assert len(y) == 3972
    assert (y[0, 0, 0], y[-1, 0, 0]) == (10.0, 3981.0)


def test_multi_step_windows_and_too_few_rows() -> None:
    features = np.arange(15 * 17, dtype=float).reshape(15, 17)

    x, y = make_windows(features, features[:, :11], input_len=10, output_len=3)
    assert x.shape == (3, 10, 17) and y.shape == (3, 3, 11)
    np.testing.assert_array_equal(y[2], features[12:15, :11])

    x, y = make_windows(features[:12], features[:12, :11], input_len=10, output_len=3)
    assert x.shape == (0, 10, 17) and y.shape == (0, 3, 11)


def test_windows_refuse_bad_lengths() -> None:
    features = np.zeros((20, 17))
    with pytest.raises(ValueError, match="positive"):
        make_windows(features, features[:, :11], input_len=0, output_len=1)
    with pytest.raises(ValueError, match="differ in length"):
        make_windows(features, features[:19, :11], input_len=10, output_len=1)


def test_validation_period_of_full_poble_sec_is_the_last_15_percent_of_the_train_rows() -> None:
    # 15,927 train rows: round(2389.05) = 2389 validation rows, so fitting stops at row 15,538.
    assert validation_start(15927, 0.15, 1) == 15927 - 2389


def test_validation_period_holds_at_least_one_full_target() -> None:
    # round(20 * 0.01) = 0 rows would leave nothing to validate on; output_len rows are kept instead.
    assert validation_start(20, 0.01, 1) == 19
    assert validation_start(20, 0.01, 3) == 17
    assert validation_start(100, 0.2, 3) == 80


def test_validation_period_of_a_split_no_longer_than_it_starts_at_row_zero() -> None:
    assert validation_start(2, 0.15, 5) == 0
    assert validation_start(0, 0.15, 1) == 0


@pytest.mark.parametrize(
    ("rows", "fraction", "output_len"),
    [(-1, 0.15, 1), (100, 0.0, 1), (100, 1.0, 1), (100, float("nan"), 1), (100, 0.15, 0)],
)
def test_validation_start_refuses_impossible_arguments(rows: int, fraction: float, output_len: int) -> None:
    with pytest.raises(ValueError):
        validation_start(rows, fraction, output_len)
