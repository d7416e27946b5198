"""Prophet serving latency: the loaded runtime (shared.model_runtime.prophet) on real PobleSec windows.

1. prepare PobleSec as the preprocess job does and fit the Prophet trainer (nonml_container) on the
   rows before the validation period, with its default hyperparameters;
2. write the model folder as the trainer logs it (Prophet's JSON per KPI, manifest) and load it
   back as the inference service does (`load_prophet_forecast`);
3. time, on sliding windows of PobleSec_test: `predict` of one window at horizon 1 and 30 (one
   request's work) and `predict_many` of 1, 20 and 512 windows (the service's batches and the
   trainer's scoring chunk), plus scoring the whole test split one step and 30 steps ahead;
4. print p50 / p90 / p99 / max per case and whether a request stays under the bar (p99 <= 10 ms);
   `--reference` also times the former path, `Prophet.predict` once per KPI, for comparison.

    .venv/bin/python bench/prophet_serving.py [--repeats 2000] [--reference]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nonml_container.settings import ProphetSettings  # noqa: E402
from nonml_container.trainer import ProphetTrainer  # noqa: E402
from preprocess_container.preprocessing import prepare_splits, read_raw_csv  # noqa: E402
from shared.data import KPI_COLUMNS, validation_start  # noqa: E402
from shared.model_runtime.prophet import ProphetForecast, load_prophet_forecast, load_prophet_models  # noqa: E402

BAR_P99_MS = 10.0
STEP = np.timedelta64(120, "s")


def percentiles(samples_s: list[float]) -> str:
    ms = np.asarray(samples_s) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return f"p50 {p50:7.3f} ms  p90 {p90:7.3f} ms  p99 {p99:7.3f} ms  max {ms.max():7.3f} ms"


def timed(call: Callable[[int], object], repeats: int) -> list[float]:
    call(0)  # first call pays for lazy imports and allocations
    samples = []
    for i in range(repeats):
        started = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - started)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="PobleSec")
    parser.add_argument("--repeats", type=int, default=2000, help="timed calls per single-window case")
    parser.add_argument("--reference", action="store_true", help="also time Prophet.predict per KPI")
    args = parser.parse_args()

    data = REPO / "data"
    prepared = prepare_splits(
        read_raw_csv((data / f"{args.dataset}.csv").read_bytes(), "train"),
        read_raw_csv((data / f"{args.dataset}_test.csv").read_bytes(), "test"),
    )
    # Defaults of every field, without the service's connection settings (nothing is contacted).
    settings = ProphetSettings.model_construct()
    input_len = settings.INPUT_SEQ_LEN
    start = validation_start(len(prepared.train), settings.VALIDATION_FRACTION, settings.OUTPUT_SEQ_LEN)
    fit_started = time.perf_counter()
    outcome = ProphetTrainer(settings).fit(
        prepared.train, start, input_len, threading.Event(), scaler=prepared.scaler, step=STEP
    )
    print(f"{args.dataset}: fitted on {start} rows in {time.perf_counter() - fit_started:.1f} s")

    with tempfile.TemporaryDirectory(prefix="flts-prophet-bench-") as tmp:
        folder = Path(tmp) / "PROPHET"
        outcome.save_model(folder)
        load_started = time.perf_counter()
        forecast = load_prophet_forecast(folder, prepared.scaler, input_len, STEP)
        print(f"loaded in {time.perf_counter() - load_started:.2f} s (includes importing prophet)")
        models = load_prophet_models(folder)[0] if args.reference else {}

    test = prepared.test
    timestamps = test.index.to_numpy(dtype="datetime64[ns]")
    kpis = prepared.scaler.inverse_array(test.loc[:, list(KPI_COLUMNS)].to_numpy(dtype=np.float64))
    ends = np.arange(input_len, len(test) + 1)  # each window is rows end-input_len .. end-1

    def window(i: int, horizon: int) -> tuple[np.ndarray, np.ndarray, int]:
        end = int(ends[i % len(ends)])
        return timestamps[end - input_len : end], kpis[end - input_len : end], horizon

    def one(horizon: int) -> Callable[[int], object]:
        return lambda i: forecast.predict(*window(i, horizon))

    def many(batch: int, horizon: int) -> Callable[[int], object]:
        return lambda i: forecast.predict_many([window(i * batch + j, horizon) for j in range(batch)])

    results: list[tuple[str, list[float], bool]] = []
    for horizon in (1, 30):
        results.append((f"predict, 1 window, horizon {horizon}", timed(one(horizon), args.repeats), True))
    for batch, horizon in ((1, 1), (20, 1), (20, 30), (512, 1), (512, 30)):
        samples = timed(many(batch, horizon), max(20, args.repeats // batch))
        results.append((f"predict_many, {batch} windows, horizon {horizon}", samples, False))
    for name, samples, _ in results:
        print(f"{name:<40} {percentiles(samples)}")
    for horizon in (1, 30):
        seconds = _score_seconds(forecast, ends, window, horizon)
        print(f"scoring the test split, horizon {horizon}: {seconds:.3f} s")
    if models:
        from shared.model_runtime.prophet import quiet_stan

        quiet_stan()

        def reference(i: int) -> object:
            ts, _, _ = window(i, 1)
            future = pd.DataFrame({"ds": pd.DatetimeIndex([ts[-1] + STEP])})
            return [models[kpi].predict(future)["yhat"].to_numpy() for kpi in KPI_COLUMNS]

        print(f"{'reference: Prophet.predict x 11 KPIs':<40} {percentiles(timed(reference, 50))}")

    worst = max(float(np.percentile(np.asarray(s) * 1e3, 99)) for _, s, request in results if request)
    met = worst <= BAR_P99_MS
    verdict = "MET" if met else "MISSED"
    print(f"bar: one request p99 <= {BAR_P99_MS:.0f} ms -> worst p99 {worst:.3f} ms: {verdict}")
    return 0 if met else 1


def _score_seconds(
    forecast: ProphetForecast,
    ends: np.ndarray,
    window: Callable[[int, int], tuple[np.ndarray, np.ndarray, int]],
    horizon: int,
) -> float:
    """All test windows through predict_many in chunks of 512, as the trainer service scores them."""
    count = len(ends) - horizon
    started = time.perf_counter()
    for chunk in range(0, count, 512):
        forecast.predict_many([window(i, horizon) for i in range(chunk, min(count, chunk + 512))])
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
