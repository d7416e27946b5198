"""The Prophet part of the trainer: one model per KPI, forecasting from the client's window."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from nonml_container.correction import MIN_ROWS_PER_COEFFICIENT, fit_window_correction
from nonml_container.fitting import ProphetStopped, fit_prophet_models
from nonml_container.settings import ProphetSettings
from shared.accuracy import mse
from shared.data import KPI_COLUMNS, MinMaxScaler
from shared.data import validation_start as holdout_start
from shared.events import ModelType
from shared.model_runtime.prophet import (
    ProphetCurves,
    ProphetForecast,
    WindowCorrection,
    prophet_models,
    save_prophet_models,
)
from shared.settings.trainer import ParamValue
from shared.trainer_service import EpochRecord, FitFailed, FitOutcome, FitStopped


class ProphetTrainer:
    """Fits on the rows before the validation period and answers windows as the recurrent models do.

    Two rounds of fits: Prophet models on the fit rows before an inner holdout (the fit rows' own
    tail, cut by the validation rule) whose one-step errors there fit the window correction, then
    the models kept, on all the fit rows. The validation rows are never fitted on.
    """

    model_type = ModelType.PROPHET

    def __init__(self, settings: ProphetSettings) -> None:
        self.hyperparameters = settings.hyperparameters()
        self.workers = settings.PROPHET_WORKERS
        self.timeout_s = settings.PROPHET_FIT_TIMEOUT_S
        self.validation_fraction = settings.VALIDATION_FRACTION

    def params(self) -> dict[str, ParamValue]:
        return {**self.hyperparameters.params(), "prophet_workers": self.workers}

    def fit(
        self,
        train: pd.DataFrame,
        validation_start: int,
        input_len: int,
        stop: threading.Event,
        on_epoch: Callable[[int], None] | None = None,
        *,
        scaler: MinMaxScaler,
        step: np.timedelta64,
    ) -> FitOutcome:
        fit_rows = train.iloc[:validation_start]
        if len(fit_rows) < 2:
            raise FitFailed(
                f"Prophet needs at least 2 rows before the validation period, got {len(fit_rows)}"
            )
        try:
            # One limit for both rounds of fits, as PROPHET_FIT_TIMEOUT_S promises.
            deadline = time.monotonic() + self.timeout_s
            correction, correction_rows = self._fit_correction(fit_rows, input_len, stop, step, deadline)
            models = prophet_models(self._fit_models(fit_rows, stop, deadline))
        except ProphetStopped as exc:
            raise FitStopped(str(exc)) from exc
        try:
            curves = ProphetCurves.from_models(models, KPI_COLUMNS)
            forecast = ProphetForecast(curves, correction, scaler, input_len, step)
        except ValueError as exc:
            raise FitFailed(str(exc)) from exc
        # Prophet has no epochs: the curve is one point, the fitted curve's error on the fit rows.
        fitted = curves.evaluate(fit_rows.index.to_numpy())
        if not np.all(np.isfinite(fitted)):
            raise FitFailed("Prophet produced NaN or infinite values on its own fit rows")
        train_mse = mse(fitted, fit_rows.loc[:, list(KPI_COLUMNS)].to_numpy(dtype=np.float64))

        def save(directory: Path) -> None:
            save_prophet_models(models, correction, directory)

        return FitOutcome(
            forecast=forecast,
            save_model=save,
            history=[EpochRecord(epoch=1, train_loss=train_mse)],
            best_epoch=None,
            extra_metrics={"train_mse": train_mse, "correction_rows": float(correction_rows)},
        )

    def _fit_models(self, frame: pd.DataFrame, stop: threading.Event, deadline: float) -> dict[str, object]:
        return fit_prophet_models(
            frame,
            self.hyperparameters,
            workers=self.workers,
            stop=stop,
            timeout_s=max(0.0, deadline - time.monotonic()),
        )

    def _fit_correction(
        self,
        fit_rows: pd.DataFrame,
        input_len: int,
        stop: threading.Event,
        step: np.timedelta64,
        deadline: float,
    ) -> tuple[WindowCorrection, int]:
        """The window correction from an inner holdout; the last-value correction when the fit
        rows are too few to hold one out (then 0 rows are reported)."""
        inner_start = holdout_start(len(fit_rows), self.validation_fraction, 1)
        if inner_start < 2 or len(fit_rows) - inner_start < MIN_ROWS_PER_COEFFICIENT * (input_len + 1):
            return WindowCorrection.last_value(len(KPI_COLUMNS), input_len), 0
        inner = prophet_models(self._fit_models(fit_rows.iloc[:inner_start], stop, deadline))
        curve = ProphetCurves.from_models(inner, KPI_COLUMNS).evaluate(fit_rows.index.to_numpy())
        return fit_window_correction(
            fit_rows.loc[:, list(KPI_COLUMNS)].to_numpy(dtype=np.float64),
            curve,
            fit_rows.index.to_numpy(),
            first_target=inner_start,
            lags=input_len,
            step=step,
        )
