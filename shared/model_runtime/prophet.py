"""Prophet at serving time: one Prophet model per KPI, stored as JSON, evaluated with numpy.

Each KPI's model (fitted by the Prophet trainer, `nonml_container`) describes the KPI, in scaled
units, as a piecewise-linear trend plus Fourier seasonalities of the timestamp. Stored form:
`prophet.serialize.model_to_json` per KPI (plain JSON, never a pickle) plus a manifest that also
carries the window correction. At load time the fitted parameters are copied into plain arrays
(`ProphetCurves`): evaluating them is a handful of numpy operations, where `Prophet.predict`
builds data frames and costs ~10 ms per KPI and call.

A forecast uses the client's window, as the recurrent models do (`ProphetForecast`): the next
value is a weighted sum of the window's last rows plus Prophet's change from the last timestamp to
the next, fed back step by step for longer horizons. The weights and the gain on Prophet's change
are fitted by the trainer (nonml_container.correction); Prophet supplies the shape of the day and
week, the window the level, so a trend that drifts away from the data after the fit rows costs
little.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from shared.data import KPI_COLUMNS, MinMaxScaler
from shared.model_runtime.forecasting import kpi_scaler_arrays
from shared.model_runtime.ranges import KpiRanges

if TYPE_CHECKING:
    # prophet is imported where it is used: importing it costs seconds (cmdstanpy, plotting).
    from prophet import Prophet

MANIFEST_FILE = "prophet_spec.json"
MANIFEST_KIND = "prophet-per-kpi"

Floats = npt.NDArray[np.float64]

_NS_PER_SECOND = 1e9
_SECONDS_PER_DAY = 86_400.0


def quiet_stan() -> None:
    # cmdstanpy logs every fit at INFO, and prophet's own pandas calls raise deprecation
    # warnings we cannot act on; both are noise at the volumes a trainer runs.
    for name in ("cmdstanpy", "prophet", "prophet.plot"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"prophet(\..*)?$")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"prophet(\..*)?$")


# --- the fitted curves as arrays -----------------------------------------------------------------


@dataclass(frozen=True)
class ProphetCurves:
    """Prophet's `yhat` of several fitted models (one per column), from their parameters alone.

    Shapes: K columns, C changepoints (padded per model: changepoint +inf, rate change 0), F
    Fourier features (a sine and a cosine per distinct frequency over all models; a model without
    a frequency has coefficient 0 there). Seasonalities sharing a frequency share its features:
    the model is linear in them, so their coefficients add.
    """

    columns: tuple[str, ...]
    start_ns: npt.NDArray[np.int64]  # (K,) the first fitted timestamp, ns since the epoch
    t_scale_ns: Floats  # (K,) the fitted time span, ns
    k: Floats  # (K,) initial growth rate
    m: Floats  # (K,) initial offset
    changepoints_t: Floats  # (K, C) changepoint times on the scaled time axis
    deltas: Floats  # (K, C) rate change at each changepoint
    offset_changes: Floats  # (K, C) -changepoints_t * deltas: keeps the trend continuous
    flat: npt.NDArray[np.bool_]  # (K,) growth="flat": the trend is m alone
    y_scale: Floats  # (K,)
    floor: Floats  # (K,) 0 with scaling="absmax", y_min with scaling="minmax"
    frequencies: Floats  # (F/2,) cycles per day
    beta_additive: Floats  # (F, K) already multiplied by y_scale, as Prophet does
    beta_multiplicative: Floats  # (F, K)

    @classmethod
    def from_models(cls, models: Mapping[str, Prophet], columns: Sequence[str]) -> ProphetCurves:
        """Copy the parameters out of fitted models; ValueError for a feature this evaluation
        does not reproduce (logistic growth, holidays, extra regressors, conditional seasonality)."""
        missing = [c for c in columns if c not in models]
        if missing:
            raise ValueError(f"no Prophet model for {missing}")
        parts = [_model_parts(column, models[column]) for column in columns]
        frequencies = sorted({f for part in parts for f, _, _ in part.fourier})
        position = {f: i for i, f in enumerate(frequencies)}
        n_cp = max(len(part.changepoints_t) for part in parts)
        changepoints = np.full((len(parts), n_cp), np.inf)
        deltas = np.zeros((len(parts), n_cp))
        beta_add = np.zeros((2 * len(frequencies), len(parts)))
        beta_mult = np.zeros((2 * len(frequencies), len(parts)))
        for j, part in enumerate(parts):
            changepoints[j, : len(part.changepoints_t)] = part.changepoints_t
            deltas[j, : len(part.deltas)] = part.deltas
            for frequency, coefficients, multiplicative in part.fourier:
                row = 2 * position[frequency]
                if multiplicative:
                    beta_mult[row : row + 2, j] += coefficients
                else:
                    beta_add[row : row + 2, j] += coefficients * part.y_scale
        finite = np.isfinite(changepoints)
        return cls(
            columns=tuple(columns),
            start_ns=np.array([p.start_ns for p in parts], dtype=np.int64),
            t_scale_ns=np.array([p.t_scale_ns for p in parts], dtype=np.float64),
            k=np.array([p.k for p in parts], dtype=np.float64),
            m=np.array([p.m for p in parts], dtype=np.float64),
            changepoints_t=changepoints,
            deltas=deltas,
            offset_changes=np.where(finite, -np.where(finite, changepoints, 0.0) * deltas, 0.0),
            flat=np.array([p.flat for p in parts], dtype=np.bool_),
            y_scale=np.array([p.y_scale for p in parts], dtype=np.float64),
            floor=np.array([p.floor for p in parts], dtype=np.float64),
            frequencies=np.array(frequencies, dtype=np.float64),
            beta_additive=beta_add,
            beta_multiplicative=beta_mult,
        )

    def evaluate(self, timestamps: npt.ArrayLike) -> Floats:
        """`yhat` of every model at `timestamps` (datetime64): shape (len(timestamps), K)."""
        ns = np.asarray(timestamps, dtype="datetime64[ns]").astype(np.int64)
        t = (ns[:, None] - self.start_ns[None, :]).astype(np.float64) / self.t_scale_ns
        active = self.changepoints_t[None, :, :] <= t[:, :, None]
        rate = self.k + (active * self.deltas).sum(axis=-1)
        offset = self.m + (active * self.offset_changes).sum(axis=-1)
        trend = np.where(self.flat, self.m, rate * t + offset) * self.y_scale + self.floor
        if self.frequencies.size == 0:
            return np.asarray(trend, dtype=np.float64)
        # Prophet's fourier_series: days since the epoch, angle = (i + 1) / period * 2 pi days.
        days = ns.astype(np.float64) / _NS_PER_SECOND / _SECONDS_PER_DAY
        angles = self.frequencies[None, :] * (np.pi * 2 * days)[:, None]
        features = np.empty((len(ns), 2 * self.frequencies.size), dtype=np.float64)
        features[:, 0::2] = np.sin(angles)
        features[:, 1::2] = np.cos(angles)
        yhat = trend * (1.0 + features @ self.beta_multiplicative) + features @ self.beta_additive
        return np.asarray(yhat, dtype=np.float64)


@dataclass(frozen=True)
class _ModelParts:
    start_ns: int
    t_scale_ns: float
    k: float
    m: float
    changepoints_t: Floats
    deltas: Floats
    flat: bool
    y_scale: float
    floor: float
    fourier: list[tuple[float, Floats, bool]]  # (cycles per day, [sin, cos] coefficients, multiplicative)


def _model_parts(column: str, model: Prophet) -> _ModelParts:
    if model.history is None or model.params is None or model.start is None:
        raise ValueError(f"{column}: the Prophet model is not fitted")
    if model.growth not in ("linear", "flat"):
        raise ValueError(f"{column}: growth {model.growth!r} is not supported (linear or flat)")
    if model.extra_regressors or model.holidays is not None or model.country_holidays is not None:
        raise ValueError(f"{column}: holidays and extra regressors are not supported")
    params = model.params
    beta = np.nanmean(np.atleast_2d(np.asarray(params["beta"], dtype=np.float64)), axis=0)
    fourier: list[tuple[float, Floats, bool]] = []
    column_index = 0
    # Prophet stacks the seasonal features in the order of model.seasonalities, each as
    # [sin(1), cos(1), sin(2), cos(2), ...]; beta follows the same order.
    for name, props in model.seasonalities.items():
        if props.get("condition_name") is not None:
            raise ValueError(f"{column}: conditional seasonality {name!r} is not supported")
        period = float(props["period"])
        multiplicative = props["mode"] == "multiplicative"
        for i in range(int(props["fourier_order"])):
            coefficients = beta[column_index : column_index + 2]
            fourier.append(((i + 1) / period, np.array(coefficients, dtype=np.float64), multiplicative))
            column_index += 2
    if column_index != beta.size:
        raise ValueError(
            f"{column}: {beta.size} seasonal coefficients, the seasonalities need {column_index}"
        )
    t_scale = model.t_scale
    y_scale = model.y_scale
    if t_scale is None or y_scale is None:
        raise ValueError(f"{column}: the Prophet model has no time or value scale")
    floor = float(model.y_min or 0.0) if model.scaling == "minmax" else 0.0
    return _ModelParts(
        start_ns=int(model.start.value),
        t_scale_ns=float(t_scale.value),
        k=float(np.nanmean(params["k"])),
        m=float(np.nanmean(params["m"])),
        changepoints_t=np.atleast_1d(np.asarray(model.changepoints_t, dtype=np.float64)),
        deltas=np.atleast_1d(
            np.nanmean(np.atleast_2d(np.asarray(params["delta"], dtype=np.float64)), axis=0)
        ),
        flat=model.growth == "flat",
        y_scale=float(y_scale),
        floor=floor,
        fourier=fourier,
    )


# --- the window correction -----------------------------------------------------------------------


@dataclass(frozen=True)
class WindowCorrection:
    """How a forecast uses the client's window, per KPI, in scaled units.

    One step: y(t+1) = sum_j weights[:, j] * y(t - lags + 1 + j) + gain * (f(t+1) - f(t)), with f
    Prophet's curve; later steps feed the earlier ones back. `weights` (K, lags) run from the
    oldest row to the newest. `last_value()` (weight 1 on the last row, gain 1) is the
    forecast f(t+h) + (y(t) - f(t)): Prophet's curve moved to pass through the last observation.
    """

    weights: Floats  # (K, lags)
    gain: Floats  # (K,)

    def __post_init__(self) -> None:
        if self.weights.ndim != 2 or self.weights.shape[1] < 1 or self.gain.shape != self.weights.shape[:1]:
            raise ValueError(f"weights {self.weights.shape} and gain {self.gain.shape} do not match")
        if not (np.all(np.isfinite(self.weights)) and np.all(np.isfinite(self.gain))):
            raise ValueError("the window correction has non-finite coefficients")

    @property
    def lags(self) -> int:
        return int(self.weights.shape[1])

    @classmethod
    def last_value(cls, columns: int, lags: int = 1) -> WindowCorrection:
        weights = np.zeros((columns, lags))
        weights[:, -1] = 1.0
        return cls(weights, np.ones(columns))

    def to_dict(self, columns: Sequence[str]) -> dict[str, Any]:
        return {
            "lags": self.lags,
            "weights": {c: [float(v) for v in self.weights[i]] for i, c in enumerate(columns)},
            "gain": {c: float(self.gain[i]) for i, c in enumerate(columns)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], columns: Sequence[str]) -> WindowCorrection:
        try:
            weights = np.array([[float(v) for v in data["weights"][c]] for c in columns], dtype=np.float64)
            gain = np.array([float(data["gain"][c]) for c in columns], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable window correction: {exc!r}") from exc
        if weights.shape[1] != int(data.get("lags", weights.shape[1])):
            raise ValueError("window correction: lags disagree with the weights")
        return cls(weights, gain)


# --- the forecast ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProphetForecast:
    """A loaded Prophet (one model per KPI) ready to answer windows; immutable, shareable."""

    curves: ProphetCurves
    correction: WindowCorrection
    scaler: MinMaxScaler
    input_seq_len: int
    step: np.timedelta64

    def __post_init__(self) -> None:
        if self.curves.columns != KPI_COLUMNS:
            raise ValueError(f"Prophet models for {list(self.curves.columns)}, not the KPI columns")
        if self.correction.weights.shape[0] != len(KPI_COLUMNS):
            raise ValueError("the window correction does not cover the KPI columns")
        if self.correction.lags > self.input_seq_len:
            raise ValueError(
                f"the correction reads {self.correction.lags} rows, windows have {self.input_seq_len}"
            )
        kpi_scaler_arrays(self.scaler)  # refuses a scaler over other columns now, not per request

    def predict(self, timestamps: np.ndarray, kpis: np.ndarray, horizon: int) -> np.ndarray:
        """`horizon` rows of the 11 KPIs (original units) after the last of `timestamps`."""
        return self.predict_many([(timestamps, kpis, horizon)])[0]

    def predict_many(self, windows: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> list[np.ndarray]:
        """Several (timestamps, kpis, horizon) windows at once: one curve evaluation for all of
        their timestamps, one vectorised step per horizon row."""
        if not windows:
            return []
        lags = self.correction.lags
        n_kpi = len(KPI_COLUMNS)
        for timestamps, kpis, horizon in windows:
            if horizon < 1:
                raise ValueError("horizon must be at least 1")
            if len(timestamps) < self.input_seq_len or np.shape(kpis) != (len(timestamps), n_kpi):
                raise ValueError(f"need at least {self.input_seq_len} rows of timestamps and {n_kpi} KPIs")
        lo, span = kpi_scaler_arrays(self.scaler)
        ranges = KpiRanges.from_scaler(self.scaler)
        floor = (ranges.low - lo) / span
        longest = max(h for _, _, h in windows)
        last = np.array([np.asarray(ts[-1], dtype="datetime64[ns]") for ts, _, _ in windows])
        # The curve at each window's last timestamp and the `longest` after it; windows of a
        # scoring pass overlap almost entirely, so each distinct timestamp is evaluated once.
        grid = last[:, None] + np.arange(longest + 1, dtype=np.int64) * np.timedelta64(self.step, "ns")
        unique, inverse = np.unique(grid.reshape(-1), return_inverse=True)
        curve = self.curves.evaluate(unique)[inverse].reshape(len(windows), longest + 1, n_kpi)
        prophet_steps = np.diff(curve, axis=1) * self.correction.gain
        buffer = np.empty((len(windows), lags + longest, n_kpi), dtype=np.float64)
        buffer[:, :lags] = (
            np.stack([np.asarray(k[-lags:], dtype=np.float64) for _, k, _ in windows]) - lo
        ) / span
        weights = self.correction.weights.T  # (lags, K)
        for h in range(longest):
            nxt = np.einsum("blk,lk->bk", buffer[:, h : h + lags], weights) + prophet_steps[:, h]
            # Fed-back steps are clipped too: the next step must not build on an impossible value.
            buffer[:, lags + h] = np.maximum(nxt, floor)
        out = ranges.clip(buffer[:, lags:] * span + lo)
        return [out[b, :horizon] for b, (_, _, horizon) in enumerate(windows)]


# --- storage ------------------------------------------------------------------------------------


def prophet_models(models: Mapping[str, object]) -> dict[str, Prophet]:
    """`models` checked to be fitted Prophet models (what the trainer's fitting returns)."""
    from prophet import Prophet

    checked = {kpi: model for kpi, model in models.items() if isinstance(model, Prophet)}
    others = sorted(set(models) - set(checked))
    if others:
        raise TypeError(f"not Prophet models: {others}")
    return checked


def save_prophet_models(models: Mapping[str, object], correction: WindowCorrection, directory: Path) -> None:
    """Write <kpi>.json (prophet's own JSON) per model and a manifest naming them, with the
    window correction."""
    from prophet.serialize import model_to_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for kpi, model in prophet_models(models).items():
        name = f"{kpi}.json"
        (directory / name).write_text(model_to_json(model))
        files[kpi] = name
    columns = list(models)
    manifest = {
        "kind": MANIFEST_KIND,
        "columns": columns,
        "files": files,
        "correction": correction.to_dict(columns),
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def load_prophet_models(directory: Path) -> tuple[dict[str, Prophet], list[str], dict[str, Any]]:
    """The models, their column order and the manifest written by save_prophet_models (no pickle)."""
    quiet_stan()
    from prophet.serialize import model_from_json

    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise ValueError(f"{directory} does not hold a {MANIFEST_KIND} model")
    models = {kpi: model_from_json((directory / name).read_text()) for kpi, name in manifest["files"].items()}
    return prophet_models(models), list(manifest["columns"]), manifest


def load_prophet_forecast(
    directory: Path, scaler: MinMaxScaler, input_seq_len: int, step: np.timedelta64
) -> ProphetForecast:
    """A ProphetForecast from the folder save_prophet_models wrote.

    A folder written before the manifest carried a correction is served with the last-value
    correction: Prophet's curve moved through the window's last observation.
    """
    models, columns, manifest = load_prophet_models(directory)
    curves = ProphetCurves.from_models(models, columns)
    stored = manifest.get("correction")
    correction = (
        WindowCorrection.from_dict(stored, columns)
        if stored is not None
        else WindowCorrection.last_value(len(columns))
    )
    return ProphetForecast(curves, correction, scaler, input_seq_len, step)
