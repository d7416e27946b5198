"""Windows for training, validation and scoring: shapes and time alignment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared.accuracy import evaluation_rows
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, STEP, make_windows, validation_start
from train_container.training import NotEnoughData, frame_arrays, split_windows


def row_numbered_frame(rows: int) -> pd.DataFrame:
    """Every cell holds its row number, so a window's values say which rows it covers."""
    index = pd.date_range("2018-02-05", periods=rows, freq=STEP, name="time")
    values = np.repeat(np.arange(rows, dtype=float)[:, None], len(FEATURE_COLUMNS), axis=1)
    return pd.DataFrame(values, index=index, columns=list(FEATURE_COLUMNS))


def test_windows_have_contract_shapes() -> None:
    features, targets = frame_arrays(row_numbered_frame(50))
    x, y = make_windows(features, targets, input_len=10, output_len=3)
    assert x.shape == (50 - 10 - 3 + 1, 10, len(FEATURE_COLUMNS))
    assert y.shape == (38, 3, len(KPI_COLUMNS))


def test_every_target_row_comes_strictly_after_its_input_rows() -> None:
    features, targets = frame_arrays(row_numbered_frame(40))
    x, y = make_windows(features, targets, input_len=10, output_len=2)
    last_input_row = x[:, -1, 0]
    first_target_row = y[:, 0, 0]
    np.testing.assert_array_equal(first_target_row, last_input_row + 1)
    np.testing.assert_array_equal(y[:, 1, 0], last_input_row + 2)
    # inputs are consecutive rows
    np.testing.assert_array_equal(np.diff(x[:, :, 0], axis=1), 1.0)


@pytest.mark.parametrize("output_len", [1, 3])
def test_training_windows_predict_only_rows_before_the_validation_start(output_len: int) -> None:
    features, targets = frame_arrays(row_numbered_frame(200))
    cut = validation_start(200, 0.2, output_len)
    (train_x, train_y), (val_x, val_y) = split_windows(features, targets, cut, 10, output_len)
    assert train_y[:, :, 0].max() == cut - 1
    assert train_x[:, :, 0].max() < cut
    # every validation target row lies in [cut, N), and each of those rows is a first target once
    assert val_y[:, :, 0].min() == cut and val_y[:, :, 0].max() == 199
    np.testing.assert_array_equal(val_y[:, 0, 0], np.arange(cut, 200 - output_len + 1))
    # the validation windows still see a full input window before their target, reaching back
    assert val_x.shape[1] == 10 and val_x[0, -1, 0] == cut - 1 and val_x[0, 0, 0] == cut - 10


def test_validation_tail_targets_never_overlap_training_targets() -> None:
    features, targets = frame_arrays(row_numbered_frame(200))
    cut = 200 - 40
    (train_x, train_y), (val_x, val_y) = split_windows(features, targets, cut, 10, 1)
    assert train_y[:, :, 0].max() < cut
    assert val_y[:, :, 0].min() == cut
    assert val_y[:, :, 0].max() == 199
    # the validation windows still see a full input window before their target
    assert val_x.shape[1] == 10 and val_x[0, -1, 0] == cut - 1
    assert len(train_x) == cut - 10 and len(val_x) == 40


@pytest.mark.parametrize(("rows", "cut"), [(12, 10), (40, 5), (40, 40), (40, 0)])
def test_split_refuses_a_cut_that_leaves_no_training_or_no_validation_window(rows: int, cut: int) -> None:
    features, targets = frame_arrays(row_numbered_frame(rows))
    with pytest.raises(NotEnoughData):
        split_windows(features, targets, cut, 10, 1)


def test_scoring_windows_and_scoring_rows_line_up() -> None:
    frame = row_numbered_frame(30)
    features, targets = frame_arrays(frame)
    x, y = make_windows(features, targets, input_len=10, output_len=1)
    actual, baseline = evaluation_rows(targets, input_len=10)
    assert len(x) == len(actual) == 20
    np.testing.assert_array_equal(y[:, 0, :], actual)
    np.testing.assert_array_equal(x[:, -1, : len(KPI_COLUMNS)], baseline)


def test_frames_with_missing_columns_or_nan_are_refused() -> None:
    frame = row_numbered_frame(20)
    with pytest.raises(ValueError, match="lacks columns"):
        frame_arrays(frame.drop(columns=["up"]))
    frame.iloc[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        frame_arrays(frame)
