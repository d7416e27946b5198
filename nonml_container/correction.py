"""The window correction of a Prophet forecast: how much of each window row and of Prophet's own
step to trust, per KPI (shared.model_runtime.prophet.WindowCorrection applies it).

Fitted by least squares on the one-step-ahead rows of an inner holdout: the tail of the fit rows,
forecast by Prophet models fitted only on the rows before it. In-sample residuals would not do:
within its fit Prophet's curve follows the data, so they would teach the correction to trust the
curve's level. After the fit rows the trend extrapolates and often drifts (short series, a level
shift at the end); on held-out rows the fit learns to take the level from the window and only the
change from Prophet, which is how the model is used on validation, test and at inference time.

Chosen on the validation periods of PobleSec, LesCorts and ElBorn (models fitted on the rows
before them) over three forms that correct Prophet's curve instead: the curve moved through the
last observation, a damped last error, free weights on the window's errors. One step ahead all
four are close; 30 steps ahead those three were 1.8 to 5 times worse than persistence on `up` at
LesCorts and ElBorn, where the trend extrapolates badly, while this form stayed 10-26 % better than
persistence on `down` and `up` at all three.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shared.model_runtime.prophet import WindowCorrection

# Fewer usable one-step rows per coefficient than this and the fit is not trusted.
MIN_ROWS_PER_COEFFICIENT = 4


def fit_window_correction(
    values: npt.ArrayLike,
    curve: npt.ArrayLike,
    timestamps: npt.ArrayLike,
    *,
    first_target: int,
    lags: int,
    step: np.timedelta64,
) -> tuple[WindowCorrection, int]:
    """The correction fitted on targets rows first_target..n-1; returns it and the rows used.

    `values` (n, K) are the observations and `curve` (n, K) Prophet's values at the same rows, both
    in the units the models were fitted in; `timestamps` (n,) their times. A target is used only
    when it and the `lags` rows before it are evenly spaced at `step` (a gap would pair rows that
    are not neighbours). With too few usable rows, `WindowCorrection.last_value` is returned with 0.
    """
    y = np.asarray(values, dtype=np.float64)
    f = np.asarray(curve, dtype=np.float64)
    ns = np.asarray(timestamps, dtype="datetime64[ns]").astype(np.int64)
    if y.ndim != 2 or f.shape != y.shape or ns.shape != y.shape[:1]:
        raise ValueError(f"values {y.shape}, curve {f.shape} and timestamps {ns.shape} do not match")
    if lags < 1:
        raise ValueError("lags must be at least 1")
    columns = y.shape[1]
    targets = np.arange(max(first_target, lags), len(y))
    span_ns = int(np.timedelta64(step, "ns").astype(np.int64)) * lags
    targets = targets[ns[targets] - ns[targets - lags] == span_ns]
    if len(targets) < MIN_ROWS_PER_COEFFICIENT * (lags + 1):
        return WindowCorrection.last_value(columns, lags), 0
    window_rows = targets[:, None] + np.arange(-lags, 0)[None, :]  # oldest .. newest
    prophet_step = f[targets] - f[targets - 1]
    weights = np.empty((columns, lags))
    gain = np.empty(columns)
    for column in range(columns):
        design = np.column_stack([y[window_rows, column], prophet_step[:, column]])
        # lstsq gives the minimum-norm answer for a constant column instead of failing.
        solution = np.linalg.lstsq(design, y[targets, column], rcond=None)[0]
        weights[column], gain[column] = solution[:lags], solution[lags]
    if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(gain))):
        return WindowCorrection.last_value(columns, lags), 0
    return WindowCorrection(weights, gain), len(targets)
