"""Load test of the inference API with real windows from the test split.

Each simulated user posts sliding windows of INPUT_SEQ_LEN consecutive rows of the test CSV
(real timestamps, real KPIs, original units) to `POST /predict`, and now and then asks
`GET /healthz`. Any answer on /predict other than a 200 with `inference_length` finite
predictions counts as a failure, so a clean run is also the post-deploy smoke test.

Headless:  locust -f locust/locustfile.py --headless -u 10 -r 5 -t 30s --csv out/run --host http://127.0.0.1:8000
Web mode:  locust -f locust/locustfile.py --host http://127.0.0.1:8000   (UI on :8089; POST /swarm
           with form fields user_count and spawn_rate, GET /stats/requests, POST /stop)

Environment (all optional):
| variable                  | default                              | meaning                               |
| LOCUST_DATA_PATH          | <repo>/data/<LOCUST_DATASET>_test.csv | CSV with `time` + the 11 KPI columns  |
| LOCUST_DATASET            | PobleSec                             | which dataset's test split            |
| LOCUST_INPUT_ROWS         | 10                                   | rows per request (>= INPUT_SEQ_LEN)   |
| LOCUST_INFERENCE_LENGTH   | 1                                    | forecast horizon per request          |
| LOCUST_HEALTH_WEIGHT      | 1                                    | task weight of GET /healthz           |
| LOCUST_PREDICT_WEIGHT     | 19                                   | task weight of POST /predict          |
| LOCUST_WAIT_MAX_S         | 0.05                                 | think time per user, 0..this, seconds |
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
from datetime import datetime, timedelta
from pathlib import Path

from locust.contrib.fasthttp import FastHttpUser

from locust import between, task
from shared.columns import KPI_COLUMNS

STEP = timedelta(minutes=2)
HERE = Path(__file__).resolve().parent


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def data_path() -> Path:
    explicit = os.environ.get("LOCUST_DATA_PATH")
    if explicit:
        return Path(explicit)
    dataset = _env("LOCUST_DATASET", "PobleSec")
    for root in (HERE.parent / "data", Path("/app/data"), Path.cwd() / "data"):
        candidate = root / f"{dataset}_test.csv"
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no {dataset}_test.csv found; set LOCUST_DATA_PATH")


def load_rows(path: Path) -> list[tuple[datetime, list[float]]]:
    rows: list[tuple[datetime, list[float]]] = []
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            stamp = datetime.fromisoformat(record["time"])
            values = []
            for name in KPI_COLUMNS:
                text = record.get(name, "")
                values.append(float(text) if text not in ("", None) else math.nan)
            rows.append((stamp, values))
    return rows


def build_bodies(rows: list[tuple[datetime, list[float]]], window: int, horizon: int) -> list[bytes]:
    """Every sliding window of `window` consecutive rows that has no missing value and no gap
    (the service rightly refuses those), serialized once up front."""
    bodies: list[bytes] = []
    for start in range(len(rows) - window + 1):
        part = rows[start : start + window]
        if any(math.isnan(v) for _, values in part for v in values):
            continue
        if any(b[0] - a[0] != STEP for a, b in itertools.pairwise(part)):
            continue
        data: dict[str, list[object]] = {"ts": [stamp.strftime("%Y-%m-%d %H:%M:%S") for stamp, _ in part]}
        for j, name in enumerate(KPI_COLUMNS):
            data[name] = [values[j] for _, values in part]
        bodies.append(json.dumps({"data": data, "inference_length": horizon}).encode())
    if not bodies:
        raise ValueError(f"no complete window of {window} rows in the data")
    return bodies


INFERENCE_LENGTH = int(_env("LOCUST_INFERENCE_LENGTH", "1"))
BODIES = build_bodies(load_rows(data_path()), int(_env("LOCUST_INPUT_ROWS", "10")), INFERENCE_LENGTH)
HEADERS = {"Content-Type": "application/json"}


class InferenceUser(FastHttpUser):
    """A client of the forecasting API: mostly forecasts, sometimes a health check."""

    wait_time = between(0.0, float(_env("LOCUST_WAIT_MAX_S", "0.05")))

    def on_start(self) -> None:
        # Users start at different points of the test split, then slide forward row by row.
        self._next = random.randrange(len(BODIES))

    @task(int(_env("LOCUST_PREDICT_WEIGHT", "19")))
    def predict(self) -> None:
        body = BODIES[self._next]
        self._next = (self._next + 1) % len(BODIES)
        # FastHttpSession sends bytes as they are; its annotation just leaves bytes out.
        post = self.client.post("/predict", data=body, headers=HEADERS, catch_response=True)  # type: ignore[arg-type]
        with post as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                answer = response.json()
                predictions = answer["predictions"]
            except (ValueError, KeyError, TypeError) as exc:
                response.failure(f"unreadable answer: {exc}")
                return
            if answer.get("status") != "SUCCESS" or len(predictions) != INFERENCE_LENGTH:
                response.failure(f"expected {INFERENCE_LENGTH} predictions, got {len(predictions)}")
            elif not all(math.isfinite(p[name]) for p in predictions for name in KPI_COLUMNS):
                response.failure("a prediction is not finite")

    @task(int(_env("LOCUST_HEALTH_WEIGHT", "1")))
    def healthz(self) -> None:
        with self.client.get("/healthz", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
