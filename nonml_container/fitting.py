"""Fitting the Prophet trainer's models: one Prophet per KPI, in this process or in parallel ones.

Models are fitted on rows of the scaled train split (ds = time index, y = scaled KPI); their curves
are functions of the timestamp, in scaled units. By default the train split is averaged into 10-minute buckets
before fitting: Prophet only models trend and daily/weekly seasonality, which a 10-minute series
carries as well as the 2-minute one, and Stan's optimiser then works on 5x fewer rows. On the
full 2-minute PobleSec series LBFGS also fails on `mcs_down` and Prophet falls back to Newton
(~190 s for that one KPI); on the bucket means it converges in under a second. The curves are
still evaluated at 2-minute timestamps.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nonml_container.settings import ProphetHyperparameters
from shared.data import KPI_COLUMNS
from shared.model_runtime.prophet import quiet_stan

if TYPE_CHECKING:
    from prophet import Prophet

log = logging.getLogger(__name__)


class ProphetStopped(RuntimeError):
    """The stop flag was set while models were being fitted."""


def _build_prophet(options: ProphetHyperparameters) -> Prophet:
    from prophet import Prophet

    model = Prophet(
        growth="linear",
        n_changepoints=options.PROPHET_CHANGEPOINTS,
        changepoint_prior_scale=options.PROPHET_CHANGEPOINT_PRIOR_SCALE,
        seasonality_mode=options.PROPHET_SEASONALITY_MODE,
        yearly_seasonality=False,
        weekly_seasonality=False,
        daily_seasonality=False,
        uncertainty_samples=0,
        mcmc_samples=0,
    )
    model.add_seasonality(name="daily", period=1.0, fourier_order=options.PROPHET_DAILY_FOURIER)
    model.add_seasonality(name="weekly", period=7.0, fourier_order=options.PROPHET_WEEKLY_FOURIER)
    return model


def fit_frame(ds: np.ndarray, y: np.ndarray, resample_minutes: int) -> pd.DataFrame:
    """Prophet's input frame: the raw rows, or bucket means stamped at each bucket's centre.

    The centre, not the left edge, is the time a bucket mean describes: a left label would shift
    the fitted daily cycle by half a bucket against the 2-minute timestamps it predicts. Empty
    buckets (gaps in the data) are dropped, never filled.
    """
    series = pd.Series(np.asarray(y, dtype=np.float64), index=pd.DatetimeIndex(pd.to_datetime(ds)))
    if resample_minutes <= 0 or len(series) < 2:
        return pd.DataFrame({"ds": series.index, "y": series.to_numpy()})
    step = series.index.to_series().diff().median()
    bucket = pd.Timedelta(minutes=resample_minutes)
    if pd.isna(step) or bucket <= step:
        return pd.DataFrame({"ds": series.index, "y": series.to_numpy()})
    means = series.resample(bucket, label="left", closed="left").mean().dropna()
    # Rows at t, t+step, ... t+bucket-step: their mean sits at t + (bucket - step) / 2.
    centres = means.index + (bucket - step) / 2
    return pd.DataFrame({"ds": centres, "y": means.to_numpy()})


def fit_one_kpi(kpi: str, ds: np.ndarray, y: np.ndarray, options: ProphetHyperparameters) -> tuple[str, str]:
    """Fit one KPI's model (in a worker process or in-process); return (kpi, model JSON)."""
    quiet_stan()
    from prophet.serialize import model_to_json

    model = _build_prophet(options)
    model.fit(fit_frame(ds, y, options.PROPHET_FIT_RESAMPLE_MINUTES))
    return kpi, model_to_json(model)


def fit_prophet_models(
    train_frame: pd.DataFrame,
    options: ProphetHyperparameters,
    *,
    workers: int = 2,
    stop: threading.Event | None = None,
    timeout_s: float = 900.0,
    columns: Sequence[str] = KPI_COLUMNS,
) -> dict[str, object]:
    """Fit one Prophet per KPI in `workers` processes; return {kpi: Prophet} in `columns` order.

    `workers=1` fits in this process, one KPI after another: on the bucket means a fit takes
    well under a second, less than starting a worker process that imports prophet. Workers are
    spawned, not forked: the parent holds Kafka client threads, and forking a threaded process
    can deadlock the child. Raises ProphetStopped when `stop` is set (pending fits are
    cancelled; in-process, checked between KPIs) and TimeoutError after `timeout_s`.
    """
    from prophet.serialize import model_from_json

    ds = train_frame.index.to_numpy()
    if workers <= 1:
        return _fit_in_process(train_frame, ds, options, stop=stop, timeout_s=timeout_s, columns=columns)
    results: dict[str, str] = {}
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=max(1, min(workers, len(columns))), mp_context=context)
    try:
        pending: set[Future[tuple[str, str]]] = {
            pool.submit(fit_one_kpi, kpi, ds, train_frame[kpi].to_numpy(dtype=np.float64), options)
            for kpi in columns
        }
        waited = 0.0
        while pending:
            if stop is not None and stop.is_set():
                raise ProphetStopped("stop requested while fitting Prophet models")
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            waited += 0.5 if not done else 0.0
            for future in done:
                kpi, payload = future.result()
                results[kpi] = payload
                log.info("prophet model fitted", extra={"kpi": kpi, "fitted": len(results)})
            if waited > timeout_s:
                raise TimeoutError(f"Prophet fits did not finish within {timeout_s:.0f}s")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return {kpi: model_from_json(results[kpi]) for kpi in columns}


def _fit_in_process(
    train_frame: pd.DataFrame,
    ds: np.ndarray,
    options: ProphetHyperparameters,
    *,
    stop: threading.Event | None,
    timeout_s: float,
    columns: Sequence[str],
) -> dict[str, object]:
    from prophet.serialize import model_from_json

    started = time.monotonic()
    models: dict[str, object] = {}
    for kpi in columns:
        if stop is not None and stop.is_set():
            raise ProphetStopped("stop requested while fitting Prophet models")
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"Prophet fits did not finish within {timeout_s:.0f}s")
        fit_started = time.monotonic()
        # The JSON round trip makes the model the same object a worker process would return.
        _, payload = fit_one_kpi(kpi, ds, train_frame[kpi].to_numpy(dtype=np.float64), options)
        models[kpi] = model_from_json(payload)
        log.info(
            "prophet model fitted",
            extra={"kpi": kpi, "fitted": len(models), "seconds": round(time.monotonic() - fit_started, 2)},
        )
    return models
