"""inference_container.validation: every bad window is a 4xx naming the problem; good ones parse."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from inference_container.openapi import example_columns
from inference_container.validation import (
    Limits,
    RequestError,
    parse_json,
    parse_predict_request,
)
from shared.data import KPI_COLUMNS, MinMaxScaler
from shared.model_runtime.ranges import KpiRanges

# The served model's train-fit scaler, here fitted on the example window itself.
SCALER = MinMaxScaler.fit(pd.DataFrame(example_columns()))
RANGES = KpiRanges.from_scaler(SCALER)
LIMITS = Limits(
    input_seq_len=10,
    step=np.timedelta64(120, "s"),
    max_rows=50,
    max_inference_length=24,
    ranges=RANGES,
)


def _body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"data": example_columns(), "inference_length": 1}
    body.update(changes)
    return copy.deepcopy(body)


def _with_column(name: str, values: Any) -> dict[str, Any]:
    body = _body()
    body["data"][name] = values
    return body


def _reject(payload: Any, query_length: str | None = None, query_index: str | None = None) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_predict_request(payload, LIMITS, query_length, query_index)
    assert 400 <= info.value.status < 500
    return info.value


def test_a_real_window_parses_into_ordered_timestamps_and_a_float_matrix() -> None:
    parsed = parse_predict_request(_body(inference_length=3), LIMITS)
    assert parsed.kpis.shape == (10, len(KPI_COLUMNS))
    assert parsed.kpis.dtype == np.float64
    assert parsed.timestamps[0] == np.datetime64("2018-02-28T02:34:00")
    assert parsed.inference_length == 3
    assert parsed.kpis[0, 0] == example_columns()["down"][0]


def test_rows_given_as_a_list_of_objects_parse_the_same_as_columns() -> None:
    columns = example_columns()
    rows = [{name: columns[name][i] for name in columns} for i in range(10)]
    as_rows = parse_predict_request({"data": rows}, LIMITS)
    as_columns = parse_predict_request({"data": columns}, LIMITS)
    np.testing.assert_array_equal(as_rows.kpis, as_columns.kpis)
    np.testing.assert_array_equal(as_rows.timestamps, as_columns.timestamps)


def test_unknown_extra_columns_are_ignored() -> None:
    body = _with_column("cell_name", ["x"] * 10)
    body["data"]["extra_numbers"] = [1, 2]
    assert parse_predict_request(body, LIMITS).kpis.shape == (10, 11)


def test_time_column_may_be_named_time_timestamp_or_by_index_col() -> None:
    for name in ("time", "timestamp", "when"):
        body = _body()
        body["data"][name] = body["data"].pop("ts")
        index_col = name if name == "when" else None
        assert parse_predict_request(body, LIMITS, None, index_col).time_column == name


def test_aware_timestamps_are_converted_to_utc() -> None:
    body = _body()
    body["data"]["ts"] = [t.replace(" ", "T") + "+01:00" for t in body["data"]["ts"]]
    parsed = parse_predict_request(body, LIMITS)
    assert parsed.timestamps[0] == np.datetime64("2018-02-28T01:34:00")


def test_query_inference_length_overrides_the_body() -> None:
    assert parse_predict_request(_body(inference_length=2), LIMITS, "5").inference_length == 5


def _ts_shift(i: int, value: str | int) -> dict[str, Any]:
    body = _body()
    body["data"]["ts"][i] = value
    return body


def _kpi_set(name: str, i: int, value: Any) -> dict[str, Any]:
    body = _body()
    body["data"][name][i] = value
    return body


def _without(name: str) -> dict[str, Any]:
    body = _body()
    del body["data"][name]
    return body


def _rows(n: int) -> dict[str, Any]:
    base = np.datetime64("2018-02-28T02:34:00") + np.arange(n) * np.timedelta64(120, "s")
    data: dict[str, Any] = {"ts": [str(t) for t in base]}
    for name in KPI_COLUMNS:
        data[name] = [1.0] * n
    return {"data": data}


BAD_CASES = {
    "body is a list": ([1, 2], 422, "JSON object"),
    "no data": ({"inference_length": 1}, 422, "lacks 'data'"),
    "data is a string": ({"data": "x"}, 422, "'data' must be an object of columns"),
    "duplicate timestamps": (_ts_shift(5, "2018-02-28 02:42:00"), 422, "duplicate timestamps"),
    "unordered timestamps": (_ts_shift(5, "2018-02-28 02:40:00"), 422, "unordered timestamps"),
    "wrong step": (_ts_shift(9, "2018-02-28 02:53:00"), 422, "must be 120 s apart"),
    "unparsable timestamp": (_ts_shift(3, "yesterday"), 422, "not an ISO 8601 timestamp"),
    "numeric timestamp": (_ts_shift(3, 1519785240), 422, "ISO 8601 strings"),
    "mixed time zones": (_ts_shift(0, "2018-02-28T02:34:00+00:00"), 422, "mixes time zones"),
    "string KPI": (_kpi_set("up", 4, "74320"), 422, "column 'up' row 4: expected a number, got a string"),
    "null KPI": (_kpi_set("down", 0, None), 422, "column 'down' row 0: expected a number, got null"),
    "boolean KPI": (_kpi_set("rb_up", 2, True), 422, "got a boolean"),
    "huge integer KPI": (_kpi_set("down", 1, 10**400), 422, "too large"),
    "missing KPI column": (_without("mcs_up_var"), 422, "missing KPI columns: mcs_up_var"),
    "no time column": (_without("ts"), 422, "no timestamp column"),
    "index_col absent": ({**_body(), "index_col": "nope"}, 422, "index_col names 'nope'"),
    "column not a list": (_with_column("down", 5.0), 422, "column 'down' must be a list"),
    "ragged column": (_with_column("down", [1.0] * 9), 422, "has 9 values but 'ts' has 10"),
    "too few rows": (_rows(9), 422, "at least 10 rows, got 9"),
    "too many rows": (_rows(51), 413, "too many rows: 51 > the maximum of 50"),
    "horizon zero": (_body(inference_length=0), 422, "between 1 and 24, got 0"),
    "horizon too large": (_body(inference_length=25), 422, "between 1 and 24, got 25"),
    "horizon a float": (_body(inference_length=1.5), 422, "'inference_length' must be an integer"),
    "horizon a string": (_body(inference_length="2"), 422, "'inference_length' must be an integer"),
    "row missing a KPI": (
        {"data": [{"ts": "2018-02-28 02:34:00", "down": 1.0}] * 10},
        422,
        "'data'[0] lacks the column 'up'",
    ),
    "row not an object": ({"data": [1] * 10}, 422, "'data'[0] must be an object"),
    "empty row list": ({"data": []}, 422, "'data' has no rows"),
}


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
def test_bad_window_is_refused_with_a_message_naming_the_problem(case: str) -> None:
    payload, status, message = BAD_CASES[case]
    error = _reject(payload)
    assert error.status == status
    assert message in error.message


def test_query_inference_length_that_is_not_an_integer_is_refused() -> None:
    assert "query parameter inference_length must be an integer" in _reject(_body(), "abc").message
    assert "between 1 and 24, got 99" in _reject(_body(), "99").message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "body is empty"),
        (b'{"data": ', "not valid JSON"),
        (b'{"data": {"down": [NaN]}}', "NaN and Infinity are not JSON numbers"),
        (b'{"data": {"down": [1e400]}}', "NaN and Infinity are not JSON numbers"),
        (b'{"data": {"down": [Infinity]}}', "NaN and Infinity are not JSON numbers"),
    ],
)
def test_malformed_json_is_a_400_that_says_why(raw: bytes, message: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_json(raw)
    assert info.value.status == 400
    assert message in info.value.message


def test_valid_json_round_trips() -> None:
    assert parse_json(orjson.dumps(_body()))["inference_length"] == 1


def _ceiling(name: str) -> float:
    return float(RANGES.high[KPI_COLUMNS.index(name)])


def test_the_plausible_range_is_zero_to_the_train_maximum_plus_ten_train_ranges() -> None:
    for name in KPI_COLUMNS:
        values = example_columns()[name]
        assert _ceiling(name) == pytest.approx(max(values) + 10 * (max(values) - min(values)), rel=1e-12)
    assert (RANGES.low == 0.0).all()


def test_negative_traffic_is_refused_naming_the_column_the_row_and_the_range() -> None:
    error = _reject(_kpi_set("down", 3, -5.0))
    assert error.status == 422
    assert "column 'down' row 3: -5 is outside the plausible range [0, " in error.message
    assert f"{_ceiling('down'):.6g}]" in error.message


def test_a_magnitude_far_beyond_the_training_data_is_refused_naming_column_row_and_range() -> None:
    error = _reject(_kpi_set("up", 7, 1e30))
    assert error.status == 422
    expected = f"column 'up' row 7: 1e+30 is outside the plausible range [0, {_ceiling('up'):.6g}]"
    assert expected in error.message


def test_every_offending_column_is_named_with_its_first_offending_row() -> None:
    body = _kpi_set("rnti_count", 2, -1)
    body["data"]["rnti_count"][6] = -2
    body["data"]["rb_up_var"][4] = 1e12
    error = _reject(body)
    assert "column 'rnti_count' row 2: -1 " in error.message
    assert "row 6" not in error.message
    assert "column 'rb_up_var' row 4: 1e+12 " in error.message
    assert "'down'" not in error.message


def test_zero_everywhere_and_values_at_the_ceiling_are_accepted() -> None:
    zeros = _body()
    for name in KPI_COLUMNS:
        zeros["data"][name] = [0] * 9 + [-0.0]
    assert (parse_predict_request(zeros, LIMITS).kpis == 0).all()
    at_ceiling = _body()
    for name in KPI_COLUMNS:
        at_ceiling["data"][name][5] = _ceiling(name)
    parsed = parse_predict_request(at_ceiling, LIMITS)
    np.testing.assert_array_equal(parsed.kpis[5], RANGES.high)


def test_just_above_the_ceiling_is_refused() -> None:
    error = _reject(_kpi_set("mcs_down", 0, float(np.nextafter(_ceiling("mcs_down"), np.inf))))
    assert "column 'mcs_down' row 0" in error.message


def test_a_window_in_the_range_but_below_the_train_minimum_is_accepted() -> None:
    # Quiet hours lie below anything in a busy training window; only the physical floor is firm.
    body = _body()
    body["data"]["mcs_down"] = [0.5] * 10
    assert parse_predict_request(body, LIMITS).kpis[:, KPI_COLUMNS.index("mcs_down")].max() == 0.5
