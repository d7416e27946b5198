"""Parse and validate a `POST /predict` body once, into immutable numpy arrays.

Built for the hot path: orjson parses, a few set and numpy operations validate, and nothing
per-row goes through pydantic or pandas. Every rejection is a `RequestError` carrying a 4xx
status and a message that names the field, the row and the problem.

Values are also held to the plausible range of the served model (shared.model_runtime.ranges):
never negative, never above the model's train maximum plus `PLAUSIBLE_SPAN_FACTOR` train ranges.
A window outside it would be answered by extrapolation far from anything the model was fitted on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from shared.data import KPI_COLUMNS
from shared.model_runtime.ranges import PLAUSIBLE_SPAN_FACTOR, KpiRanges

TIME_COLUMN_CANDIDATES = ("ts", "time", "timestamp")
# A window needs 12 columns; unknown extras are ignored, but not without bound (each costs work).
MAX_COLUMNS = 64
# Traffic measured by this system lies in this range; anything outside is a client bug, and a
# horizon that runs past it would overflow datetime arithmetic downstream.
EARLIEST_TIMESTAMP = np.datetime64("1970-01-01T00:00:00", "us")
LATEST_TIMESTAMP = np.datetime64("2100-01-01T00:00:00", "us")
_NUMBER_TYPES = frozenset({int, float})


class RequestError(Exception):
    """A client mistake (or a station not loaded yet, 503): answered with `status`, `message` and
    any extra `fields` of the error body."""

    def __init__(self, status: int, message: str, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields


@dataclass(frozen=True)
class Limits:
    """What the loaded model and the settings allow."""

    input_seq_len: int
    step: np.timedelta64
    max_rows: int
    max_inference_length: int
    # The served model's plausible KPI ranges, in KPI_COLUMNS order (its scaler's order).
    ranges: KpiRanges


@dataclass(frozen=True)
class PredictRequest:
    """A validated window: ordered timestamps at the training step and finite KPIs."""

    timestamps: np.ndarray  # (n,) datetime64[us], UTC-naive
    kpis: np.ndarray  # (n, 11) float64 in original units, KPI_COLUMNS order
    inference_length: int
    time_column: str


def parse_json(body: bytes) -> Any:
    """orjson with messages a client can act on (NaN/Infinity are not JSON)."""
    if not body:
        raise RequestError(400, "request body is empty; send a JSON object with a 'data' field")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        if "infinity" in text.lower() or "NaN" in text or b"NaN" in body or b"Infinity" in body:
            raise RequestError(
                400, f"body is not valid JSON: NaN and Infinity are not JSON numbers ({text})"
            ) from None
        raise RequestError(400, f"body is not valid JSON: {text}") from None


def requested_station(payload: Any, query_identifier: str | None) -> str | None:
    """The station a request names: `?identifier=` wins over the body's "identifier"; None when
    neither names one."""
    if not isinstance(payload, dict):
        raise RequestError(422, f"body must be a JSON object with a 'data' field, got {_kind(payload)}")
    if query_identifier is not None:
        name = query_identifier.strip()
        source = "query parameter identifier"
    else:
        value = payload.get("identifier")
        if value is None:
            return None
        if type(value) is not str:
            raise RequestError(422, f"'identifier' must be a station name (string), got {_kind(value)}")
        name = value.strip()
        source = "'identifier'"
    if not name:
        raise RequestError(422, f"{source} is empty; name a station or leave it out")
    return name


def parse_predict_request(
    payload: Any,
    limits: Limits,
    query_inference_length: str | None = None,
    query_index_col: str | None = None,
) -> PredictRequest:
    """Validate a decoded body; `?inference_length=` and `?index_col=` override the body."""
    if not isinstance(payload, dict):
        raise RequestError(422, f"body must be a JSON object with a 'data' field, got {_kind(payload)}")
    horizon = _inference_length(payload, query_inference_length, limits.max_inference_length)
    index_col = query_index_col if query_index_col is not None else payload.get("index_col")
    if index_col is not None and not isinstance(index_col, str):
        raise RequestError(422, f"'index_col' must be a column name (string), got {_kind(index_col)}")
    if "data" not in payload:
        raise RequestError(
            422, "body lacks 'data': an object of columns (ts + the 11 KPIs) or a list of rows"
        )
    data = payload["data"]
    width = _width(data)
    if width > MAX_COLUMNS:
        raise RequestError(
            413,
            f"too many columns in 'data': {width} > {MAX_COLUMNS} (a window needs the timestamp and 11 KPIs)",
        )
    columns = _columns(data, index_col)
    time_column = _time_column(columns, index_col)
    raw_times = columns[time_column]
    if not isinstance(raw_times, list):
        raise RequestError(
            422, f"column '{time_column}' must be a list of timestamps, got {_kind(raw_times)}"
        )
    rows = len(raw_times)
    if rows > limits.max_rows:
        raise RequestError(413, f"too many rows: {rows} > the maximum of {limits.max_rows}")
    if rows < limits.input_seq_len:
        raise RequestError(
            422, f"too few rows: the model needs at least {limits.input_seq_len} rows, got {rows}"
        )
    kpis = _kpi_matrix(columns, rows, time_column)
    _check_plausible(kpis, limits.ranges)
    timestamps = _timestamps(raw_times, time_column)
    _check_spacing(timestamps, limits.step, time_column)
    _check_range(timestamps, limits.step, horizon, time_column)
    return PredictRequest(timestamps, kpis, horizon, time_column)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _inference_length(payload: Mapping[str, Any], query_value: str | None, maximum: int) -> int:
    if query_value is not None:
        try:
            value: Any = int(query_value.strip())
        except ValueError:
            raise RequestError(
                422, f"query parameter inference_length must be an integer, got {query_value!r}"
            ) from None
        source = "query parameter inference_length"
    else:
        value = payload.get("inference_length", 1)
        source = "'inference_length'"
        if type(value) is not int:
            raise RequestError(422, f"{source} must be an integer, got {_kind(value)}")
    if value < 1 or value > maximum:
        raise RequestError(422, f"{source} must be between 1 and {maximum}, got {value}")
    return int(value)


def _columns(data: Any, index_col: str | None) -> Mapping[str, Any]:
    """Columnar (`{"ts": [...], "down": [...]}`) as is; a list of row objects turned columnar."""
    if isinstance(data, dict):
        return data
    if isinstance(data, list):
        if not data:
            raise RequestError(422, "'data' has no rows")
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise RequestError(422, f"'data'[{i}] must be an object of column values, got {_kind(row)}")
        first = data[0]
        time_column = _time_column(first, index_col)
        wanted = (time_column, *KPI_COLUMNS)
        columns: dict[str, list[Any]] = {}
        for name in wanted:
            values = []
            for i, row in enumerate(data):
                if name not in row:
                    raise RequestError(422, f"'data'[{i}] lacks the column '{name}'")
                values.append(row[name])
            columns[name] = values
        return columns
    raise RequestError(
        422, f"'data' must be an object of columns or a list of row objects, got {_kind(data)}"
    )


def _time_column(columns: Mapping[str, Any], index_col: str | None) -> str:
    if index_col is not None:
        if index_col not in columns:
            raise RequestError(422, f"index_col names '{index_col}', which is not a column of 'data'")
        return index_col
    for name in TIME_COLUMN_CANDIDATES:
        if name in columns:
            return name
    raise RequestError(
        422, "'data' has no timestamp column: send one named ts, time or timestamp, or name it with index_col"
    )


def _kpi_matrix(columns: Mapping[str, Any], rows: int, time_column: str) -> np.ndarray:
    missing = [name for name in KPI_COLUMNS if name not in columns]
    if missing:
        raise RequestError(422, f"missing KPI columns: {', '.join(missing)}")
    kpis = np.empty((rows, len(KPI_COLUMNS)), dtype=np.float64)
    for j, name in enumerate(KPI_COLUMNS):
        values = columns[name]
        if not isinstance(values, list):
            raise RequestError(422, f"column '{name}' must be a list of numbers, got {_kind(values)}")
        if len(values) != rows:
            raise RequestError(
                422, f"column '{name}' has {len(values)} values but '{time_column}' has {rows} timestamps"
            )
        # bool is a subclass of int but never a measurement; a set of exact types catches it.
        if not set(map(type, values)) <= _NUMBER_TYPES:
            i, bad = next((i, v) for i, v in enumerate(values) if type(v) not in _NUMBER_TYPES)
            raise RequestError(422, f"column '{name}' row {i}: expected a number, got {_kind(bad)}")
        try:
            kpis[:, j] = values
        except OverflowError:
            raise RequestError(422, f"column '{name}' holds a number too large for a float") from None
    if not np.isfinite(kpis).all():
        row, col = np.argwhere(~np.isfinite(kpis))[0]
        raise RequestError(422, f"column '{KPI_COLUMNS[col]}' row {row}: value is not finite")
    return kpis


def _check_plausible(kpis: np.ndarray, ranges: KpiRanges) -> None:
    """422 naming every column with a value outside the model's plausible range (its first such row)."""
    # Two comparisons settle the common, in-range case; the per-column report is built only to refuse.
    if (kpis >= ranges.low).all() and (kpis <= ranges.high).all():
        return
    found = ranges.violations(kpis)
    if found:
        raise RequestError(
            422,
            "KPI values outside the plausible range of the served model (never negative, at most the "
            f"training maximum plus {PLAUSIBLE_SPAN_FACTOR:g} training ranges): "
            + "; ".join(violation.describe() for violation in found),
        )


def _timestamps(values: Sequence[Any], time_column: str) -> np.ndarray:
    parsed: list[datetime] = []
    aware: bool | None = None
    first_offset = None
    for i, value in enumerate(values):
        if type(value) is not str:
            raise RequestError(
                422, f"'{time_column}'[{i}]: timestamps must be ISO 8601 strings, got {_kind(value)}"
            )
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise RequestError(
                422, f"'{time_column}'[{i}] = {value[:40]!r} is not an ISO 8601 timestamp"
            ) from None
        has_zone = moment.tzinfo is not None
        if aware is None:
            aware = has_zone
        elif aware != has_zone:
            raise RequestError(
                422,
                f"'{time_column}' mixes time zones: row {i} is {'aware' if has_zone else 'naive'} "
                f"but row 0 is {'aware' if aware else 'naive'}; send all UTC-naive or all with an offset",
            )
        if has_zone:
            offset = moment.utcoffset()
            if first_offset is None:
                first_offset = offset
            elif offset != first_offset:
                raise RequestError(
                    422,
                    f"'{time_column}' mixes time zones: row {i} has UTC offset {offset} but row 0 has "
                    f"{first_offset}; send every timestamp with the same offset",
                )
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        parsed.append(moment)
    return np.array(parsed, dtype="datetime64[us]")


def _check_spacing(timestamps: np.ndarray, step: np.timedelta64, time_column: str) -> None:
    gaps = np.diff(timestamps)
    bad = np.flatnonzero(gaps != step)
    if bad.size == 0:
        return
    i = int(bad[0])
    gap = gaps[i]
    step_s = step / np.timedelta64(1, "s")
    if gap == np.timedelta64(0, "us"):
        raise RequestError(422, f"duplicate timestamps in '{time_column}': rows {i} and {i + 1} are equal")
    if gap < np.timedelta64(0, "us"):
        raise RequestError(
            422, f"unordered timestamps in '{time_column}': row {i + 1} is earlier than row {i}"
        )
    raise RequestError(
        422,
        f"timestamps in '{time_column}' must be {step_s:g} s apart (the training step); rows {i} and "
        f"{i + 1} are {gap / np.timedelta64(1, 's'):g} s apart",
    )


def _check_range(timestamps: np.ndarray, step: np.timedelta64, horizon: int, time_column: str) -> None:
    if timestamps[0] < EARLIEST_TIMESTAMP or timestamps[-1] >= LATEST_TIMESTAMP:
        raise RequestError(
            422,
            f"timestamps in '{time_column}' must lie between {_day(EARLIEST_TIMESTAMP)} and "
            f"{_day(LATEST_TIMESTAMP)}; got {timestamps[0]} .. {timestamps[-1]}",
        )
    last_forecast = timestamps[-1] + step * horizon
    if last_forecast >= LATEST_TIMESTAMP:
        raise RequestError(
            422,
            f"inference_length {horizon} would forecast up to {last_forecast}, past {_day(LATEST_TIMESTAMP)}",
        )


def _day(moment: np.datetime64) -> str:
    return str(moment.astype("datetime64[D]"))


def _width(data: Any) -> int:
    """Columns in a columnar body, or in the first row of a list of rows."""
    if isinstance(data, dict):
        return len(data)
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return len(data[0])
    return 0
