"""Cleaning, repairs, refusals, sampling, scaling and time features of preprocess_container.preprocessing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from preprocess_container.preprocessing import (
    DataProblem,
    PreprocessOptions,
    clean_split,
    fit_scaler,
    prepare_splits,
    read_raw_csv,
    repair_count,
    sample_rows,
    validate_processed,
)
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, STEP, TIME_FEATURES, MinMaxScaler

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
START = pd.Timestamp("2018-02-05 00:00:00")
# Magnitudes like the real data: `down` ~1e8, the variances ~1e-8.
SCALES = np.array([1e8, 1e7, 5e3, 15.0, 80.0, 15.0, 60.0, 0.05, 5e-8, 0.01, 2e-8])


def raw_frame(rows: int = 60, seed: int = 0, start: pd.Timestamp = START) -> pd.DataFrame:
    """A clean raw split as read from CSV: `time` text plus the 11 KPIs."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.2, 1.0, size=(rows, len(KPI_COLUMNS))) * SCALES
    frame = pd.DataFrame(values, columns=list(KPI_COLUMNS))
    times = pd.date_range(start, periods=rows, freq=STEP)
    frame.insert(0, "time", times.strftime("%Y-%m-%d %H:%M:%S"))
    return frame


def through_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """Round-trip through CSV bytes so tests use the job's parser."""
    return read_raw_csv(frame.to_csv(index=False).encode("utf-8"), "train")


def clean(frame: pd.DataFrame, max_gap_steps: int = 720) -> tuple[pd.DataFrame, dict[str, Any]]:
    return clean_split(through_csv(frame), "train", max_gap_steps)


def assert_contract(frame: pd.DataFrame) -> None:
    validate_processed(frame, "split")
    assert list(frame.columns) == list(FEATURE_COLUMNS)
    assert frame.index.name == "time"
    assert not frame.isna().to_numpy().any()


# --- the real data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def poblesec() -> tuple[pd.DataFrame, pd.DataFrame]:
    train = read_raw_csv((DATA_DIR / "PobleSec.csv").read_bytes(), "train")
    test = read_raw_csv((DATA_DIR / "PobleSec_test.csv").read_bytes(), "test")
    return train, test


def test_full_poblesec_meets_the_contract_and_counts_its_22_nan_cells(
    poblesec: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    prepared = prepare_splits(*poblesec)
    assert prepared.train.shape == (15927, 17)
    assert prepared.test.shape == (3982, 17)
    assert_contract(prepared.train)
    assert_contract(prepared.test)
    assert prepared.repairs["train"]["nan_cells"] == 22
    assert prepared.repairs["train"]["cells_filled"] == 22
    assert prepared.repairs["test"]["nan_cells"] == 0
    kpis = prepared.train.loc[:, list(KPI_COLUMNS)].to_numpy()
    assert kpis.min() == 0.0
    assert kpis.max() == 1.0
    # Test split follows train without a gap (data/README.md).
    assert prepared.test.index[0] - prepared.train.index[-1] == STEP


def test_lescorts_repairs_count_its_1604_nan_cells() -> None:
    train = read_raw_csv((DATA_DIR / "LesCorts.csv").read_bytes(), "train")
    test = read_raw_csv((DATA_DIR / "LesCorts_test.csv").read_bytes(), "test")
    prepared = prepare_splits(train, test)
    assert prepared.repairs["train"]["nan_cells"] == 1604
    assert repair_count(prepared.repairs["train"]) == 1604
    assert_contract(prepared.train)


def test_scaler_round_trip_is_identity_on_real_train_values(
    poblesec: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    cleaned, _ = clean_split(poblesec[0], "train")
    scaler, _ = fit_scaler(cleaned)
    original = cleaned.to_numpy()
    restored = scaler.inverse_array(scaler.transform_array(original))
    np.testing.assert_allclose(restored, original, rtol=1e-9, atol=0)
    again = MinMaxScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert again == scaler


# --- repairs ------------------------------------------------------------------------------------


def test_nan_cells_are_interpolated_in_time_and_counted() -> None:
    frame = raw_frame()
    frame.loc[10, "down"] = np.nan
    frame.loc[20:22, "mcs_up"] = np.nan
    frame.loc[0, "up"] = np.nan  # an edge: back-filled
    expected_down = (frame.loc[9, "down"] + frame.loc[11, "down"]) / 2
    cleaned, report = clean(frame)
    assert report["nan_cells"] == 5
    assert report["cells_filled"] == 5
    assert not cleaned.isna().to_numpy().any()
    assert cleaned["down"].iloc[10] == pytest.approx(expected_down, rel=1e-12)
    assert cleaned["up"].iloc[0] == pytest.approx(frame.loc[1, "up"], rel=1e-12)


def test_rows_with_every_kpi_missing_are_dropped_then_refilled_inside_the_series() -> None:
    frame = raw_frame()
    frame.loc[15, list(KPI_COLUMNS)] = np.nan
    frame.loc[59, list(KPI_COLUMNS)] = np.nan  # at the end: the series ends a step earlier
    cleaned, report = clean(frame)
    assert report["rows_all_kpis_missing"] == 2
    assert report["grid_slots_inserted"] == 1
    assert report["nan_cells"] == 0
    assert len(cleaned) == 59
    assert not cleaned.isna().to_numpy().any()


def test_duplicate_timestamps_are_merged_into_their_mean() -> None:
    frame = raw_frame()
    duplicate = frame.iloc[[5]].copy()
    duplicate.loc[:, "down"] = 3e8
    expected = (frame.loc[5, "down"] + 3e8) / 2
    frame = pd.concat([frame, duplicate], ignore_index=True)
    cleaned, report = clean(frame)
    assert report["duplicate_timestamps"] == 1
    assert len(cleaned) == 60
    assert cleaned["down"].iloc[5] == pytest.approx(expected, rel=1e-12)


def test_unsorted_rows_are_sorted() -> None:
    frame = raw_frame()
    shuffled = frame.iloc[np.random.default_rng(3).permutation(len(frame))].reset_index(drop=True)
    cleaned, report = clean(shuffled)
    assert report["unsorted_rows"] > 0
    assert cleaned.index.is_monotonic_increasing
    expected, _ = clean(frame)
    pd.testing.assert_frame_equal(cleaned, expected)


def test_a_gap_in_the_grid_is_inserted_and_interpolated() -> None:
    frame = raw_frame().drop(index=[30, 31, 32, 40]).reset_index(drop=True)
    cleaned, report = clean(frame)
    assert report["grid_gaps"] == 2
    assert report["grid_slots_inserted"] == 4
    assert report["longest_gap_steps"] == 3
    assert report["cells_filled"] == 4 * len(KPI_COLUMNS)
    assert len(cleaned) == 60
    assert (np.diff(cleaned.index.asi8) == STEP.value).all()


def test_a_gap_longer_than_max_gap_steps_is_refused() -> None:
    frame = raw_frame().drop(index=range(20, 31)).reset_index(drop=True)
    with pytest.raises(DataProblem, match=r"11 consecutive 2-minute steps.*max_gap_steps=10"):
        clean(frame, max_gap_steps=10)
    _, report = clean(frame, max_gap_steps=11)
    assert report["longest_gap_steps"] == 11


def test_off_grid_timestamps_are_rounded_onto_the_grid() -> None:
    frame = raw_frame()
    frame.loc[7, "time"] = "2018-02-05 00:14:40"  # 00:14 + 40 s
    cleaned, report = clean(frame)
    assert report["off_grid_timestamps"] == 1
    assert cleaned.index[7] == pd.Timestamp("2018-02-05 00:14:00")


def test_unknown_extra_columns_are_ignored_and_reported() -> None:
    frame = raw_frame()
    frame["cell_name"] = "PobleSec"
    frame["temperature"] = 21.5
    cleaned, report = clean(frame)
    assert report["ignored_columns"] == ["cell_name", "temperature"]
    assert list(cleaned.columns) == list(KPI_COLUMNS)


def test_non_numeric_and_infinite_cells_become_missing_and_are_filled() -> None:
    frame = raw_frame().astype({"rnti_count": object, "up": object})
    frame.loc[4, "rnti_count"] = "broken"
    frame.loc[8, "up"] = "inf"
    cleaned, report = clean(frame)
    assert report["non_numeric_cells"] == 1
    assert report["infinite_cells"] == 1
    assert np.isfinite(cleaned.to_numpy()).all()


def test_timezone_aware_times_are_converted_to_utc_naive() -> None:
    frame = raw_frame(rows=20)
    times = pd.date_range("2018-02-05 01:00", periods=20, freq=STEP, tz="Europe/Madrid")
    frame["time"] = [t.isoformat() for t in times]
    cleaned, _ = clean(frame)
    assert cleaned.index.tz is None
    assert cleaned.index[0] == pd.Timestamp("2018-02-05 00:00:00")


def test_a_constant_column_scales_to_zero_and_round_trips() -> None:
    frame = raw_frame()
    frame["rb_up"] = 0.25
    cleaned, _ = clean(frame)
    scaler, report = fit_scaler(cleaned)
    assert report["constant_columns"] == ["rb_up"]
    scaled = scaler.transform_array(cleaned.to_numpy())
    column = KPI_COLUMNS.index("rb_up")
    assert np.isfinite(scaled).all()
    assert (scaled[:, column] == 0.0).all()
    np.testing.assert_allclose(scaler.inverse_array(scaled), cleaned.to_numpy(), rtol=1e-9, atol=0)
    MinMaxScaler.from_dict(scaler.to_dict())  # stays valid: positive finite ranges


def test_a_column_with_variance_near_1e_8_stays_finite_and_round_trips() -> None:
    frame = raw_frame(rows=200)
    noise = np.random.default_rng(9).normal(0.0, 1e-4, size=200)
    frame["mcs_down"] = 12.0 + noise  # variance 1e-8
    cleaned, _ = clean(frame)
    assert cleaned["mcs_down"].var() == pytest.approx(1e-8, rel=0.3)
    scaler, report = fit_scaler(cleaned)
    assert "mcs_down" not in report["constant_columns"]
    scaled = scaler.transform_array(cleaned.to_numpy())
    column = KPI_COLUMNS.index("mcs_down")
    assert np.isfinite(scaled).all()
    assert scaled[:, column].min() == 0.0
    assert scaled[:, column].max() == pytest.approx(1.0)
    np.testing.assert_allclose(scaler.inverse_array(scaled), cleaned.to_numpy(), rtol=1e-9, atol=0)


def test_a_column_constant_up_to_rounding_is_treated_as_constant() -> None:
    frame = raw_frame()
    frame["down"] = 1e8 + np.where(np.arange(60) % 2 == 0, 0.0, 1e-5)  # relative span 1e-13
    cleaned, _ = clean(frame)
    scaler, report = fit_scaler(cleaned)
    assert "down" in report["constant_columns"]
    scaled = scaler.transform_array(cleaned.to_numpy())
    assert np.abs(scaled[:, 0]).max() < 1e-4
    np.testing.assert_allclose(scaler.inverse_array(scaled), cleaned.to_numpy(), rtol=1e-9, atol=0)


# --- refusals -----------------------------------------------------------------------------------


def test_a_missing_kpi_column_is_refused_by_name() -> None:
    frame = raw_frame().drop(columns=["mcs_up_var", "rb_down"])
    with pytest.raises(DataProblem, match=r"missing KPI column\(s\): mcs_up_var, rb_down$"):
        clean(frame)


def test_a_missing_time_column_is_refused() -> None:
    frame = raw_frame().rename(columns={"time": "timestamp"})
    with pytest.raises(DataProblem, match="no 'time' column"):
        clean(frame)


@pytest.mark.parametrize("bad", ["yesterday", "2018-13-45 00:00:00", "", "12:00"])
def test_an_unparsable_time_value_is_refused_with_its_row(bad: str) -> None:
    frame = raw_frame()
    frame.loc[6, "time"] = bad
    with pytest.raises(DataProblem, match=r"not ISO-8601 timestamps; first at data row 7"):
        clean(frame)


def test_a_kpi_column_without_any_number_is_refused() -> None:
    frame = raw_frame()
    frame["rb_up_var"] = np.nan
    with pytest.raises(DataProblem, match="without a single number: rb_up_var"):
        clean(frame)


def test_bytes_that_are_not_a_csv_table_are_refused() -> None:
    with pytest.raises(DataProblem, match="cannot read the CSV"):
        read_raw_csv(b"", "train")
    with pytest.raises(DataProblem, match="cannot read the CSV"):
        read_raw_csv(b"\xff\xfe\x00garbage\x00\xff", "train")


def test_fewer_rows_than_one_window_after_sampling_is_refused() -> None:
    options = PreprocessOptions(input_seq_len=10, output_seq_len=1, sample_test_rows=10)
    with pytest.raises(DataProblem, match=r"test: 10 rows .* fewer than one window .* = 11$"):
        prepare_splits(through_csv(raw_frame()), through_csv(raw_frame(start=START + 60 * STEP)), options)
    ok = prepare_splits(
        through_csv(raw_frame()),
        through_csv(raw_frame(start=START + 60 * STEP)),
        PreprocessOptions(sample_test_rows=11),
    )
    assert len(ok.test) == 11


def test_a_train_file_shorter_than_one_window_is_refused() -> None:
    with pytest.raises(DataProblem, match="train: 5 rows"):
        prepare_splits(through_csv(raw_frame(rows=5)), through_csv(raw_frame()))


# --- sampling -----------------------------------------------------------------------------------


def _grid(rows: int = 100) -> pd.DataFrame:
    index = pd.date_range(START, periods=rows, freq=STEP, name="time")
    return pd.DataFrame({"down": np.arange(rows, dtype=float)}, index=index)


def test_head_and_tail_take_the_first_and_last_rows() -> None:
    frame = _grid()
    head, info = sample_rows(frame, 10, "head", 0)
    assert head["down"].tolist() == list(range(10))
    assert info["start_row"] == 0
    tail, info = sample_rows(frame, 10, "tail", 0)
    assert tail["down"].tolist() == list(range(90, 100))
    assert info["start_row"] == 90


def test_random_takes_one_contiguous_seeded_block_in_time_order() -> None:
    frame = _grid(1000)
    starts = set()
    for seed in range(5):
        block, info = sample_rows(frame, 50, "random", seed)
        values = block["down"].to_numpy()
        assert (np.diff(values) == 1).all()
        assert (np.diff(block.index) == STEP).all()
        again, _ = sample_rows(frame, 50, "random", seed)
        pd.testing.assert_frame_equal(block, again)
        starts.add(info["start_row"])
    assert len(starts) > 1
    train_block, _ = sample_rows(frame, 50, "random", 1, stream=0)
    test_block, _ = sample_rows(frame, 50, "random", 1, stream=1)
    assert not train_block.index.equals(test_block.index)


def test_sampling_more_rows_than_exist_keeps_every_row() -> None:
    frame = _grid(30)
    for strategy in ("head", "tail", "random"):
        chosen, info = sample_rows(frame, 500, strategy, 3)
        assert len(chosen) == 30
        assert info["rows"] == 30


def test_the_scaler_is_fitted_on_the_full_train_split_before_sampling() -> None:
    train = through_csv(raw_frame(rows=200, seed=1))
    test = through_csv(raw_frame(rows=50, seed=2, start=START + 200 * STEP))
    full = prepare_splits(train, test)
    sampled = prepare_splits(train, test, PreprocessOptions(sample_train_rows=40, sample_strategy="tail"))
    assert sampled.scaler == full.scaler
    assert len(sampled.train) == 40
    pd.testing.assert_frame_equal(sampled.train, full.train.iloc[-40:])
    assert_contract(sampled.train)


def test_test_rows_outside_the_train_range_are_scaled_beyond_unit_range_not_clipped() -> None:
    train = raw_frame(rows=50)
    test = raw_frame(rows=50, start=START + 50 * STEP)
    test.loc[3, "down"] = 5e8  # above every train value
    prepared = prepare_splits(through_csv(train), through_csv(test))
    assert prepared.test["down"].iloc[3] > 1.0
    restored = prepared.scaler.inverse_array(prepared.test.loc[:, list(KPI_COLUMNS)].to_numpy())
    assert restored[3, 0] == pytest.approx(5e8, rel=1e-9)


# --- time features ------------------------------------------------------------------------------


def test_time_features_are_added_unscaled_from_the_timestamps() -> None:
    # 2018-01-01 00:00 was a Monday: every cycle is at its start.
    train = raw_frame(rows=30, start=pd.Timestamp("2018-01-01 00:00:00"))
    test = raw_frame(rows=30, start=pd.Timestamp("2018-01-01 06:00:00"))
    prepared = prepare_splits(through_csv(train), through_csv(test))
    first = prepared.train.iloc[0]
    for name in ("min_of_day_sin", "day_of_week_sin", "day_of_year_sin"):
        assert first[name] == pytest.approx(0.0, abs=1e-12)
    for name in ("min_of_day_cos", "day_of_week_cos", "day_of_year_cos"):
        assert first[name] == pytest.approx(1.0, abs=1e-12)
    six_am = prepared.test.iloc[0]
    assert six_am["min_of_day_sin"] == pytest.approx(1.0, abs=1e-12)  # a quarter of the day
    assert six_am["min_of_day_cos"] == pytest.approx(0.0, abs=1e-12)
    assert six_am["day_of_week_sin"] == pytest.approx(math.sin(2 * math.pi * 0.25 / 7), abs=1e-12)
    features = prepared.train.loc[:, list(TIME_FEATURES)].to_numpy()
    assert (np.abs(features) <= 1.0).all()
    pairs = features.reshape(len(features), 3, 2)
    np.testing.assert_allclose((pairs**2).sum(axis=2), 1.0, atol=1e-12)
