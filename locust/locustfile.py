"""Load test of the inference API with real windows from the test split of each station.

Each simulated user posts sliding windows of INPUT_SEQ_LEN consecutive rows of a station's test
CSV (real timestamps, real KPIs, original units) to `POST /predict`, naming the station in the
body's `"identifier"`, and now and then asks `GET /healthz`. A user takes the stations of
LOCUST_DATASETS in turn, so the swarm spreads its forecasts evenly over them. Any answer on
/predict other than a 200 with `inference_length` finite predictions for the station asked
counts as a failure, so a clean run is also the post-deploy smoke test.

`flts run` points LOCUST_DATA_DIR at each station's test split as the preprocess job repaired it
(flts_cli/locust_cmd.py), so a station with NaNs, duplicates or gaps in its raw CSV is replayed as
the service accepts it; the Kubernetes image replays the clean CSVs baked into /app/data.

Headless:  locust -f locust/locustfile.py --headless -u 10 -r 5 -t 30s --csv out/run --host http://127.0.0.1:8000
Web mode:  locust -f locust/locustfile.py --host http://127.0.0.1:8000   (UI on :8089; POST /swarm
           with form fields user_count and spawn_rate, GET /stats/requests, POST /stop)

Environment (all optional):
| variable                  | default                              | meaning                               |
| LOCUST_DATASETS           | LOCUST_DATASET                       | comma list of stations (datasets)     |
| LOCUST_DATASET            | PobleSec                             | the station when LOCUST_DATASETS unset|
| LOCUST_DATA_DIR           | (searched first)                     | folder of the `<name>_test.csv` files |
| LOCUST_DATA_PATH          | <data dir>/<dataset>_test.csv        | one station's CSV (one station only)  |
| LOCUST_INPUT_ROWS         | 10                                   | rows per request (>= INPUT_SEQ_LEN)   |
| LOCUST_INFERENCE_LENGTH   | 1                                    | forecast horizon per request          |
| LOCUST_HEALTH_WEIGHT      | 1                                    | task weight of GET /healthz           |
| LOCUST_PREDICT_WEIGHT     | 19                                   | task weight of POST /predict          |
| LOCUST_WAIT_MAX_S         | 0.05                                 | think time per user, 0..this, seconds |
| LOCUST_RECONNECT_S        | 10                                   | seconds a user keeps its connection,  |
|                           |                                      | then opens a new one; 0 = keep it     |

Reconnecting matters behind a Kubernetes Service: it balances connections, not requests, so a user
that kept its first connection would never reach a replica the HPA added during the swarm. Each
user's first reconnect comes at a random point of its first period, so the swarm's reconnects are
spread out instead of all landing at once.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
import time
from datetime import datetime, timedelta
from pathlib import Path

from locust.contrib.fasthttp import FastHttpUser

from locust import between, task
from shared.columns import KPI_COLUMNS

STEP = timedelta(minutes=2)
HERE = Path(__file__).resolve().parent


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def stations() -> list[str]:
    """The stations to load, each once, in the order given."""
    names = os.environ.get("LOCUST_DATASETS") or _env("LOCUST_DATASET", "PobleSec")
    return list(dict.fromkeys(name.strip() for name in names.split(",") if name.strip()))


def data_path(dataset: str, several: bool) -> Path:
    explicit = os.environ.get("LOCUST_DATA_PATH")
    if explicit:
        if several:
            raise ValueError("LOCUST_DATA_PATH is one station's CSV; for several set LOCUST_DATA_DIR")
        return Path(explicit)
    folder = os.environ.get("LOCUST_DATA_DIR")
    roots = [Path(folder)] if folder else []
    for root in (*roots, HERE.parent / "data", Path("/app/data"), Path.cwd() / "data"):
        candidate = root / f"{dataset}_test.csv"
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no {dataset}_test.csv found; set LOCUST_DATA_DIR or LOCUST_DATA_PATH")


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


def build_bodies(
    rows: list[tuple[datetime, list[float]]], window: int, horizon: int, identifier: str
) -> list[bytes]:
    """Every sliding window of `window` consecutive rows that has no missing value and no gap
    (the service rightly refuses those), for station `identifier`, serialized once up front."""
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
        body = {"identifier": identifier, "data": data, "inference_length": horizon}
        bodies.append(json.dumps(body).encode())
    if not bodies:
        raise ValueError(f"no complete window of {window} rows in {identifier}'s data")
    return bodies


def reconnect_seconds() -> float:
    """LOCUST_RECONNECT_S: how long a user keeps one connection; 0 keeps it for the whole run."""
    text = _env("LOCUST_RECONNECT_S", "10")
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"LOCUST_RECONNECT_S must be a number of seconds, got {text!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"LOCUST_RECONNECT_S must be 0 or a positive number of seconds, got {text!r}")
    return seconds


INFERENCE_LENGTH = int(_env("LOCUST_INFERENCE_LENGTH", "1"))
RECONNECT_S = reconnect_seconds()
_STATIONS = stations()
# station -> its request bodies; the identifier is the dataset name, as the preprocess job sets it.
BODIES = {
    name: build_bodies(
        load_rows(data_path(name, len(_STATIONS) > 1)),
        int(_env("LOCUST_INPUT_ROWS", "10")),
        INFERENCE_LENGTH,
        name,
    )
    for name in _STATIONS
}
HEADERS = {"Content-Type": "application/json"}


class InferenceUser(FastHttpUser):
    """A client of the forecasting API: mostly forecasts, sometimes a health check."""

    wait_time = between(0.0, float(_env("LOCUST_WAIT_MAX_S", "0.05")))

    def on_start(self) -> None:
        # Users start at different stations and points of each test split, then take the stations
        # in turn and slide forward row by row in each.
        self._stations = itertools.islice(itertools.cycle(_STATIONS), random.randrange(len(_STATIONS)), None)
        self._next = {name: random.randrange(len(bodies)) for name, bodies in BODIES.items()}
        # As if the first connection had been opened at a random point of one period.
        self._connected_at = time.monotonic() - random.uniform(0.0, RECONNECT_S)

    def _reconnect_when_due(self) -> None:
        """Close the user's connections once they are RECONNECT_S old: the next request opens a new
        one, which the Service may send to another replica. Called between requests only (a user
        is one greenlet), so no request is ever cut off."""
        if RECONNECT_S <= 0:
            return
        now = time.monotonic()
        if now - self._connected_at >= RECONNECT_S:
            # FastHttpSession.client is geventhttpclient's user agent; closing it empties its pool
            # of per-host clients, and the next request creates a client with a fresh socket.
            self.client.client.close()
            self._connected_at = now

    @task(int(_env("LOCUST_PREDICT_WEIGHT", "19")))
    def predict(self) -> None:
        self._reconnect_when_due()
        station = next(self._stations)
        bodies = BODIES[station]
        body = bodies[self._next[station]]
        self._next[station] = (self._next[station] + 1) % len(bodies)
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
            if answer.get("identifier", station) != station:
                response.failure(f"asked for {station}, answered for {answer.get('identifier')}")
            elif answer.get("status") != "SUCCESS" or len(predictions) != INFERENCE_LENGTH:
                response.failure(f"expected {INFERENCE_LENGTH} predictions, got {len(predictions)}")
            elif not all(math.isfinite(p[name]) for p in predictions for name in KPI_COLUMNS):
                response.failure("a prediction is not finite")

    @task(int(_env("LOCUST_HEALTH_WEIGHT", "1")))
    def healthz(self) -> None:
        self._reconnect_when_due()
        with self.client.get("/healthz", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
