"""The OpenAPI description of `POST /predict`: its body schema, query parameters and examples.

The handler reads the raw body for speed (no pydantic model per row), so the schema is written
here by hand; the fuzz test (tests/integration/test_inference_fuzz.py) holds the handler to it.
"""

from __future__ import annotations

from typing import Any

from inference_container.settings import InferenceSettings
from shared.data import KPI_COLUMNS
from shared.model_runtime.ranges import PLAUSIBLE_SPAN_FACTOR

PLAUSIBLE_RANGE_RULE = (
    "Every KPI value must lie in the served model's plausible range, or the request gets 422: "
    "never negative, and at most the model's training maximum of that KPI plus "
    f"{PLAUSIBLE_SPAN_FACTOR:g} times its training range (max - min)."
)

EXAMPLE_IDENTIFIER = "PobleSec"
IDENTIFIER_RULE = (
    "The station whose champion answers (`?identifier=` wins over this field). It may be omitted "
    "while the service serves exactly one station; omitted with several served is 422. A station "
    "not served here is 404 (`loaded` lists those that are); one with a champion whose model is "
    "not loaded yet is 503 with Retry-After."
)

# The first ten rows of data/PobleSec_test.csv (Barcelona LTE, 2-minute steps): a real window.
EXAMPLE_ROWS: tuple[tuple[Any, ...], ...] = (
    (
        "2018-02-28 02:34:00",
        38105984.0,
        200720.0,
        2442.0,
        15.254138880191059,
        87.6229345081834,
        17.2,
        41.733333333333334,
        0.0063750000000000005,
        4.521638309999613e-08,
        5.766666666666667e-05,
        1.7720833333333337e-09,
    ),
    (
        "2018-02-28 02:36:00",
        38390104.0,
        74320.0,
        2402.0,
        15.63968816559706,
        84.52425014246268,
        12.681818181818182,
        28.40909090909091,
        0.006317916666666667,
        4.217600348979614e-08,
        2.608333333333333e-05,
        1.3066666666666665e-09,
    ),
    (
        "2018-02-28 02:38:00",
        110764488.0,
        1264368.0,
        6426.0,
        15.29050675860966,
        86.15132529961468,
        15.85846560846561,
        45.10316429602144,
        0.018793249999999997,
        4.531928279523e-08,
        0.0003675,
        2.064382611832612e-08,
    ),
    (
        "2018-02-28 02:40:00",
        65555408.0,
        525104.0,
        3987.0,
        15.259500845705134,
        86.22670267590141,
        16.275238095238095,
        35.16761904761905,
        0.011173750000000001,
        4.4994645916563926e-08,
        0.00014283333333333333,
        4.591833333333333e-09,
    ),
    (
        "2018-02-28 02:42:00",
        35860320.0,
        117336.0,
        2314.0,
        15.441630880509765,
        88.19724388036495,
        15.78125,
        12.34375,
        0.006092916666666667,
        4.6281924836351934e-08,
        5.5249999999999994e-05,
        2.8879166666666664e-09,
    ),
    (
        "2018-02-28 02:44:00",
        40152984.0,
        100528.0,
        2499.0,
        15.132650799681155,
        89.42800929881659,
        16.354166666666668,
        31.895833333333336,
        0.006669416666666666,
        4.331836790628829e-08,
        6.316666666666667e-05,
        1.8211111111111109e-09,
    ),
    (
        "2018-02-28 02:46:00",
        37992128.0,
        137392.0,
        2336.0,
        15.105534095013688,
        87.78168525427763,
        19.9375,
        18.5625,
        0.00636775,
        4.2860964710290096e-08,
        3.258333333333334e-05,
        1.5925e-09,
    ),
    (
        "2018-02-28 02:48:00",
        27192040.0,
        59696.0,
        1689.0,
        14.712288416441124,
        84.41242406126568,
        18.9,
        0.9,
        0.004603083333333333,
        4.5067933217826194e-08,
        1.4249999999999999e-05,
        2.016666666666666e-10,
    ),
    (
        "2018-02-28 02:50:00",
        35764488.0,
        176040.0,
        2218.0,
        14.894490114858915,
        85.13146175130706,
        15.875,
        28.583333333333332,
        0.006002833333333333,
        4.369326580915039e-08,
        4.85e-05,
        4.567444444444445e-09,
    ),
    (
        "2018-02-28 02:52:00",
        50545920.0,
        375480.0,
        3113.0,
        15.128912228395127,
        92.74762619485266,
        12.303448275862069,
        36.825287356321844,
        0.008689666666666667,
        4.422651193657065e-08,
        0.00017175,
        1.2054652777777778e-08,
    ),
)


def example_columns(rows: tuple[tuple[Any, ...], ...] = EXAMPLE_ROWS) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {"ts": [row[0] for row in rows]}
    for j, name in enumerate(KPI_COLUMNS, start=1):
        columns[name] = [row[j] for row in rows]
    return columns


def predict_openapi(settings: InferenceSettings) -> dict[str, Any]:
    """The `openapi_extra` of the /predict operation."""
    number_list = {
        "type": "array",
        "items": {"type": "number", "minimum": 0},
        "maxItems": settings.MAX_ROWS,
    }
    columns_schema = {
        "type": "object",
        "description": "Columns of equal length: a timestamp column (ts, time, timestamp or index_col) "
        f"and the 11 KPIs in original units. Unknown columns are ignored. {PLAUSIBLE_RANGE_RULE}",
        "properties": {
            "ts": {
                "type": "array",
                "items": {"type": "string", "example": "2018-02-28 02:34:00"},
                "description": "ISO 8601 timestamps, strictly increasing at the training step (120 s)",
                "maxItems": settings.MAX_ROWS,
            },
            **{name: number_list for name in KPI_COLUMNS},
        },
        "required": ["ts", *KPI_COLUMNS],
        "additionalProperties": True,
    }
    records_schema = {
        "type": "array",
        "description": "Alternatively, one object per row with the same fields.",
        "items": {"type": "object", "additionalProperties": True},
        "maxItems": settings.MAX_ROWS,
    }
    body_schema = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "identifier": {
                "type": "string",
                "minLength": 1,
                "example": EXAMPLE_IDENTIFIER,
                "description": IDENTIFIER_RULE,
            },
            "data": {"oneOf": [columns_schema, records_schema]},
            "inference_length": {
                "type": "integer",
                "minimum": 1,
                "maximum": settings.MAX_INFERENCE_LENGTH,
                "default": 1,
                "description": "Steps to forecast after the last timestamp (recursive beyond the "
                "model's output length)",
            },
            "index_col": {
                "type": "string",
                "description": "Name of the timestamp column, if not ts/time/timestamp",
            },
        },
    }
    columns = example_columns()
    prediction = {"ts": "2018-02-28T02:54:00", **{name: 0.0 for name in KPI_COLUMNS}}
    error_body = {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"status": {"type": "string", "enum": ["ERROR"]}, "detail": {"type": "string"}},
            }
        }
    }
    return {
        "parameters": [
            {
                "name": "identifier",
                "in": "query",
                "required": False,
                "description": "The station; overrides the body's identifier",
                "schema": {"type": "string", "minLength": 1},
                "example": EXAMPLE_IDENTIFIER,
            },
            {
                "name": "inference_length",
                "in": "query",
                "required": False,
                "description": "Overrides the body's inference_length",
                "schema": {"type": "integer", "minimum": 1, "maximum": settings.MAX_INFERENCE_LENGTH},
            },
            {
                "name": "index_col",
                "in": "query",
                "required": False,
                "description": "Overrides the body's index_col",
                "schema": {"type": "string"},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": body_schema,
                    "examples": {
                        "one_step": {
                            "summary": "Ten real rows, one step ahead (the station may be omitted "
                            "while only one is served)",
                            "value": {"data": columns, "inference_length": 1},
                        },
                        "three_steps": {
                            "summary": "Ten real rows, three steps ahead (recursive)",
                            "value": {"data": columns, "inference_length": 3},
                        },
                        "named_station": {
                            "summary": "Ten real rows of PobleSec, forecast by PobleSec's champion",
                            "value": {"identifier": EXAMPLE_IDENTIFIER, "data": columns},
                        },
                    },
                }
            },
        },
        "responses": {
            "200": {
                "description": "The forecast, every KPI in original units and never negative (forecasts "
                "are raised to the physical floor, 0)",
                "content": {
                    "application/json": {
                        "example": {
                            "status": "SUCCESS",
                            "identifier": EXAMPLE_IDENTIFIER,
                            "run_id": "0123456789abcdef0123456789abcdef",
                            "model_type": "GRU",
                            "config_hash": "0" * 64,
                            "predictions": [prediction],
                        }
                    }
                },
            },
            "400": {"description": "Malformed JSON", "content": error_body},
            "404": {
                "description": "The named station is not served here; `loaded` lists those that are",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string", "enum": ["ERROR"]},
                                "detail": {"type": "string"},
                                "loaded": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "example": {
                            "status": "ERROR",
                            "detail": "unknown station 'Nowhere': this service serves ElBorn, PobleSec",
                            "loaded": ["ElBorn", "PobleSec"],
                        },
                    }
                },
            },
            "413": {"description": "Body or row count above the limit", "content": error_body},
            "415": {"description": "Content-Type is not application/json", "content": error_body},
            "422": {
                "description": "The window is invalid, or the station is omitted while several are "
                "served (`loaded` lists them); the message names the problem. This includes a "
                "KPI outside the served model's plausible range (the message names the column, the "
                f"first offending row and the range). {PLAUSIBLE_RANGE_RULE}",
                "content": error_body,
            },
            "503": {
                "description": "The station (or every station) has no model loaded yet; see Retry-After",
                "content": error_body,
            },
        },
    }
