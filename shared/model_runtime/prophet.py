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
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from shared.data import KPI_COLUMNS, MinMaxScaler
from shared.model_runtime.forecasting import Window, kpi_scaler_arrays
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

    Curves of several stations (`stacked`) carry a leading station axis on every array but
    `frequencies`, padded the same way; `take` picks a row per window, and `evaluate` broadcasts
    those rows against the windows' timestamps.
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

    @classmethod
    def stacked(cls, curves: Sequence[ProphetCurves]) -> ProphetCurves:
        """Several stations' curves (no leading axis each) on one leading station axis: changepoints
        padded to the most any station has, Fourier features over every station's frequencies."""
        columns = curves[0].columns
        if any(c.columns != columns or c.start_ns.ndim != 1 for c in curves):
            raise ValueError("only single curves over the same columns can be stacked")
        frequencies = np.array(sorted({float(f) for c in curves for f in c.frequencies}), dtype=np.float64)
        n_cp = max(c.changepoints_t.shape[1] for c in curves)
        n_features = 2 * frequencies.size

        def padded(values: Floats, fill: float) -> Floats:
            return np.pad(values, ((0, 0), (0, n_cp - values.shape[1])), constant_values=fill)

        def betas(c: ProphetCurves, beta: Floats) -> Floats:
            # Each station's rows moved to the positions of its frequencies among all of them.
            rows = 2 * np.searchsorted(frequencies, c.frequencies)
            out = np.zeros((n_features, len(columns)))
            out[rows] = beta[0::2]
            out[rows + 1] = beta[1::2]
            return out

        return cls(
            columns=columns,
            start_ns=np.stack([c.start_ns for c in curves]),
            t_scale_ns=np.stack([c.t_scale_ns for c in curves]),
            k=np.stack([c.k for c in curves]),
            m=np.stack([c.m for c in curves]),
            changepoints_t=np.stack([padded(c.changepoints_t, np.inf) for c in curves]),
            deltas=np.stack([padded(c.deltas, 0.0) for c in curves]),
            offset_changes=np.stack([padded(c.offset_changes, 0.0) for c in curves]),
            flat=np.stack([c.flat for c in curves]),
            y_scale=np.stack([c.y_scale for c in curves]),
            floor=np.stack([c.floor for c in curves]),
            frequencies=frequencies,
            beta_additive=np.stack([betas(c, c.beta_additive) for c in curves]),
            beta_multiplicative=np.stack([betas(c, c.beta_multiplicative) for c in curves]),
        )

    def take(self, rows: npt.NDArray[np.int64]) -> ProphetCurves:
        """Stacked curves: the station of each row, in order (one per window)."""
        return ProphetCurves(
            columns=self.columns,
            start_ns=self.start_ns[rows],
            t_scale_ns=self.t_scale_ns[rows],
            k=self.k[rows],
            m=self.m[rows],
            changepoints_t=self.changepoints_t[rows],
            deltas=self.deltas[rows],
            offset_changes=self.offset_changes[rows],
            flat=self.flat[rows],
            y_scale=self.y_scale[rows],
            floor=self.floor[rows],
            frequencies=self.frequencies,
            beta_additive=self.beta_additive[rows],
            beta_multiplicative=self.beta_multiplicative[rows],
        )

    def evaluate(self, timestamps: npt.ArrayLike) -> Floats:
        """`yhat` of every model at `timestamps` (datetime64): shape (len(timestamps), K). Curves
        with a leading axis (`take`) evaluate timestamps (B, n) row by row: shape (B, n, K)."""
        ns = np.asarray(timestamps, dtype="datetime64[ns]").astype(np.int64)

        def per_step(values: np.ndarray) -> np.ndarray:  # (..., K) -> (..., 1, K)
            return values[..., None, :]

        t = (ns[..., :, None] - per_step(self.start_ns)).astype(np.float64) / per_step(self.t_scale_ns)
        active = self.changepoints_t[..., None, :, :] <= t[..., None]
        rate = per_step(self.k) + (active * self.deltas[..., None, :, :]).sum(axis=-1)
        offset = per_step(self.m) + (active * self.offset_changes[..., None, :, :]).sum(axis=-1)
        trend = np.where(per_step(self.flat), per_step(self.m), rate * t + offset)
        trend = trend * per_step(self.y_scale) + per_step(self.floor)
        if self.frequencies.size == 0:
            return np.asarray(trend, dtype=np.float64)
        # Prophet's fourier_series: days since the epoch, angle = (i + 1) / period * 2 pi days.
        days = ns.astype(np.float64) / _NS_PER_SECOND / _SECONDS_PER_DAY
        angles = self.frequencies * (np.pi * 2 * days)[..., None]
        features = np.empty((*ns.shape, 2 * self.frequencies.size), dtype=np.float64)
        features[..., 0::2] = np.sin(angles)
        features[..., 1::2] = np.cos(angles)
        seasonal_mult = _weighted_sum(features, self.beta_multiplicative)
        yhat = trend * (1.0 + seasonal_mult) + _weighted_sum(features, self.beta_additive)
        return np.asarray(yhat, dtype=np.float64)


def _weighted_sum(features: Floats, beta: Floats) -> Floats:
    """features (..., n, F) times beta (..., F, K), summed over F in order: unlike a BLAS product,
    whose kernel (and rounding) depends on n, a row's value never depends on the other rows, so a
    window's forecast is the same whatever horizon the windows batched with it ask for."""
    return np.asarray((features[..., :, :, None] * beta[..., None, :, :]).sum(axis=-2), dtype=np.float64)


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

    def predict_many(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """Several (timestamps, kpis, horizon) windows at once: one curve evaluation for all of
        their timestamps, one vectorised step per horizon row."""
        if not windows:
            return []
        _check_windows(windows, self.input_seq_len)
        longest = max(h for _, _, h in windows)
        # The curve at each window's last timestamp and the `longest` after it; windows of a
        # scoring pass overlap almost entirely, so each distinct timestamp is evaluated once.
        grid = _grid(windows, self.step, longest)
        unique, inverse = np.unique(grid.reshape(-1), return_inverse=True)
        curve = self.curves.evaluate(unique)[inverse].reshape(*grid.shape, len(KPI_COLUMNS))
        lo, span = kpi_scaler_arrays(self.scaler)
        return _roll_forward(
            windows,
            curve,
            self.correction.weights.T,
            self.correction.gain,
            lo,
            span,
            KpiRanges.from_scaler(self.scaler).low,
        )

    @property
    def stack_key(self) -> Hashable:
        """Forecasts with equal keys can share a `ProphetStack` (any curves can)."""
        return ("prophet", self.input_seq_len, self.step, self.correction.lags)

    @staticmethod
    def stack(forecasts: Sequence[ProphetForecast]) -> ProphetStack:
        return ProphetStack(forecasts)


class ProphetStack:
    """Several stations' ProphetForecasts of one stack key answering windows of any of them with
    one curve evaluation and one vectorised step per horizon row; immutable once built."""

    def __init__(self, forecasts: Sequence[ProphetForecast]) -> None:
        keys = {forecast.stack_key for forecast in forecasts}
        if len(keys) != 1:
            raise ValueError(f"forecasts of different shapes cannot share a stack: {keys}")
        first = forecasts[0]
        self.members = tuple(forecasts)
        self.input_seq_len = first.input_seq_len
        self.step = first.step
        self.curves = ProphetCurves.stacked([f.curves for f in forecasts])
        self.weights = np.stack([f.correction.weights.T for f in forecasts])  # (M, lags, K)
        self.gain = np.stack([f.correction.gain for f in forecasts])
        scalers = [kpi_scaler_arrays(f.scaler) for f in forecasts]
        self.lo = np.stack([lo for lo, _ in scalers])
        self.span = np.stack([span for _, span in scalers])
        self.low = np.stack([KpiRanges.from_scaler(f.scaler).low for f in forecasts])

    def predict_many(self, members: Sequence[int], windows: Sequence[Window]) -> list[np.ndarray]:
        """Window i answered by member `members[i]`, as that member's `predict_many` would."""
        if not windows:
            return []
        _check_windows(windows, self.input_seq_len)
        rows = np.asarray(members, dtype=np.int64)
        grid = _grid(windows, self.step, max(h for _, _, h in windows))
        return _roll_forward(
            windows,
            self.curves.take(rows).evaluate(grid),
            self.weights[rows],
            self.gain[rows, None],
            self.lo[rows, None],
            self.span[rows, None],
            self.low[rows, None],
        )


def _check_windows(windows: Sequence[Window], input_seq_len: int) -> None:
    n_kpi = len(KPI_COLUMNS)
    for timestamps, kpis, horizon in windows:
        if horizon < 1:
            raise ValueError("horizon must be at least 1")
        if len(timestamps) < input_seq_len or np.shape(kpis) != (len(timestamps), n_kpi):
            raise ValueError(f"need at least {input_seq_len} rows of timestamps and {n_kpi} KPIs")


def _grid(windows: Sequence[Window], step: np.timedelta64, longest: int) -> npt.NDArray[np.datetime64]:
    """(windows, longest + 1): each window's last timestamp and the `longest` after it."""
    last = np.array([np.asarray(ts[-1], dtype="datetime64[ns]") for ts, _, _ in windows])
    offsets = np.arange(longest + 1, dtype=np.int64) * np.timedelta64(step, "ns")
    return np.asarray(last[:, None] + offsets, dtype="datetime64[ns]")


def _roll_forward(
    windows: Sequence[Window],
    curve: Floats,
    weights: Floats,
    gain: Floats,
    lo: Floats,
    span: Floats,
    low: Floats,
) -> list[np.ndarray]:
    """The window correction applied step by step along Prophet's `curve` (windows, steps + 1, K).

    One model: `weights` (lags, K), the others (K,). A stack: a row per window, `weights`
    (windows, lags, K) and the others (windows, 1, K)."""
    lags = weights.shape[-2]
    longest = curve.shape[1] - 1
    floor = (low - lo) / span
    prophet_steps = np.diff(curve, axis=1) * gain
    buffer = np.empty((len(windows), lags + longest, len(KPI_COLUMNS)), dtype=np.float64)
    recent = np.stack([np.asarray(k[-lags:], dtype=np.float64) for _, k, _ in windows])
    buffer[:, :lags] = (recent - lo) / span
    for h in range(longest):
        nxt = (buffer[:, h : h + lags] * weights).sum(axis=1) + prophet_steps[:, h]
        # Fed-back steps are clipped too: the next step must not build on an impossible value.
        np.maximum(nxt[:, None], floor, out=buffer[:, lags + h : lags + h + 1])
    out = np.maximum(buffer[:, lags:] * span + lo, low)
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
