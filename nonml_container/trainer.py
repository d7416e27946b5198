"""The Prophet part of the trainer: one model per KPI, scored on the same rows as GRU/LSTM."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from nonml_container.fitting import ProphetStopped, fit_prophet_models
from nonml_container.settings import ProphetSettings
from shared.accuracy import mse
from shared.data import KPI_COLUMNS
from shared.events import ModelType
from shared.model_runtime.prophet import ProphetForecaster, save_prophet_models
from shared.settings.trainer import ParamValue
from shared.trainer_service import EpochRecord, FitFailed, FitOutcome, FitStopped


class ProphetTrainer:
    """Prophet predicts from timestamps alone; it is asked for the same scoring rows as the RNNs."""

    model_type = ModelType.PROPHET

    def __init__(self, settings: ProphetSettings) -> None:
        self.hyperparameters = settings.hyperparameters()
        self.workers = settings.PROPHET_WORKERS
        self.timeout_s = settings.PROPHET_FIT_TIMEOUT_S

    def params(self) -> dict[str, ParamValue]:
        return {**self.hyperparameters.params(), "prophet_workers": self.workers}

    def fit(
        self,
        train: pd.DataFrame,
        test: pd.DataFrame,
        input_len: int,
        stop: threading.Event,
        on_epoch: Callable[[int], None] | None = None,
    ) -> FitOutcome:
        if len(train) < 2:
            raise FitFailed(f"Prophet needs at least 2 train rows, got {len(train)}")
        try:
            models = fit_prophet_models(
                train, self.hyperparameters, workers=self.workers, stop=stop, timeout_s=self.timeout_s
            )
        except ProphetStopped as exc:
            raise FitStopped(str(exc)) from exc
        forecaster = ProphetForecaster(models)
        predictions = forecaster.predict(pd.DatetimeIndex(test.index[input_len:]))
        if not np.all(np.isfinite(predictions)):
            raise FitFailed("Prophet produced NaN or infinite forecasts")
        # Prophet has no epochs: the curve is one point, the in-sample fit error (scaled MSE).
        fitted = forecaster.predict(pd.DatetimeIndex(train.index))
        train_mse = mse(fitted, train.loc[:, list(KPI_COLUMNS)].to_numpy(dtype=np.float64))

        def save(directory: Path) -> None:
            save_prophet_models(models, directory)

        return FitOutcome(
            predictions=predictions,
            save_model=save,
            history=[EpochRecord(epoch=1, train_loss=train_mse)],
            best_epoch=None,
            extra_metrics={"train_mse": train_mse},
        )
