"""Prophet forecaster: one Prophet model per KPI, fitted in parallel processes, stored as JSON.

Models are fitted on the scaled train split (ds = time index, y = scaled KPI) and predict from
timestamps alone, in scaled units. They are serialized with `prophet.serialize.model_to_json`
(plain JSON, never a pickle) into one file per KPI plus a small manifest.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data import KPI_COLUMNS

log = logging.getLogger(__name__)

MANIFEST_FILE = "prophet_spec.json"
MANIFEST_KIND = "prophet-per-kpi"


class ProphetStopped(RuntimeError):
    """The stop flag was set while models were being fitted."""


@dataclass(frozen=True)
class ProphetOptions:
    """Kept small on purpose: no uncertainty sampling, no MCMC, few changepoints (speed)."""

    n_changepoints: int = 10
    changepoint_prior_scale: float = 0.05
    seasonality_mode: str = "additive"
    daily_fourier: int = 10
    weekly_fourier: int = 3

    def params(self) -> dict[str, str | int | float]:
        return {f"prophet_{k}": v for k, v in asdict(self).items()}


def _quiet_stan() -> None:
    # cmdstanpy logs every fit at INFO, and prophet's own pandas calls raise deprecation
    # warnings we cannot act on; both are noise at the volumes a trainer runs.
    for name in ("cmdstanpy", "prophet", "prophet.plot"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"prophet(\..*)?$")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"prophet(\..*)?$")


def _build_prophet(options: ProphetOptions):  # type: ignore[no-untyped-def]  # prophet has no type hints
    from prophet import Prophet

    model = Prophet(
        growth="linear",
        n_changepoints=options.n_changepoints,
        changepoint_prior_scale=options.changepoint_prior_scale,
        seasonality_mode=options.seasonality_mode,
        yearly_seasonality=False,
        weekly_seasonality=False,
        daily_seasonality=False,
        uncertainty_samples=0,
        mcmc_samples=0,
    )
    model.add_seasonality(name="daily", period=1.0, fourier_order=options.daily_fourier)
    model.add_seasonality(name="weekly", period=7.0, fourier_order=options.weekly_fourier)
    return model


def fit_one_kpi(kpi: str, ds: np.ndarray, y: np.ndarray, options: ProphetOptions) -> tuple[str, str]:
    """Fit one KPI's model (runs in a worker process); return (kpi, model JSON)."""
    _quiet_stan()
    from prophet.serialize import model_to_json

    model = _build_prophet(options)
    model.fit(pd.DataFrame({"ds": pd.to_datetime(ds), "y": y}))
    return kpi, model_to_json(model)


def fit_prophet_models(
    train_frame: pd.DataFrame,
    options: ProphetOptions,
    *,
    workers: int = 2,
    stop: threading.Event | None = None,
    timeout_s: float = 900.0,
    columns: Sequence[str] = KPI_COLUMNS,
) -> dict[str, object]:
    """Fit one Prophet per KPI in `workers` processes; return {kpi: Prophet} in `columns` order.

    Workers are spawned, not forked: the parent holds Kafka client threads, and forking a
    threaded process can deadlock the child. Raises ProphetStopped when `stop` is set (pending
    fits are cancelled) and TimeoutError after `timeout_s`.
    """
    from prophet.serialize import model_from_json

    ds = train_frame.index.to_numpy()
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


class ProphetForecaster:
    """Predicts all KPIs for given timestamps, in scaled units, KPI_COLUMNS order."""

    def __init__(self, models: Mapping[str, object], columns: Sequence[str] = KPI_COLUMNS) -> None:
        missing = [c for c in columns if c not in models]
        if missing:
            raise ValueError(f"no Prophet model for {missing}")
        self.models = dict(models)
        self.columns = tuple(columns)

    def predict(self, timestamps: pd.DatetimeIndex) -> np.ndarray:
        future = pd.DataFrame({"ds": pd.DatetimeIndex(timestamps)})
        out = np.empty((len(future), len(self.columns)), dtype=np.float64)
        for i, column in enumerate(self.columns):
            out[:, i] = self.models[column].predict(future)["yhat"].to_numpy(dtype=np.float64)  # type: ignore[attr-defined]
        return out


def save_prophet_models(models: Mapping[str, object], directory: Path) -> None:
    """Write <kpi>.json (prophet's own JSON) per model and a manifest naming them."""
    from prophet.serialize import model_to_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for kpi, model in models.items():
        name = f"{kpi}.json"
        (directory / name).write_text(model_to_json(model))
        files[kpi] = name
    manifest = {"kind": MANIFEST_KIND, "columns": list(models), "files": files}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def load_prophet_forecaster(directory: Path) -> ProphetForecaster:
    """Rebuild the forecaster from the JSON files written by save_prophet_models (no pickle)."""
    _quiet_stan()
    from prophet.serialize import model_from_json

    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    if manifest.get("kind") != MANIFEST_KIND:
        raise ValueError(f"{directory} does not hold a {MANIFEST_KIND} model")
    models = {kpi: model_from_json((directory / name).read_text()) for kpi, name in manifest["files"].items()}
    return ProphetForecaster(models, manifest["columns"])
