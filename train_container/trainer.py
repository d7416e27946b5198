"""The GRU/LSTM part of the trainer: settings -> RecurrentHyperparameters -> train_container.training."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shared.data import MinMaxScaler
from shared.events import ModelType
from shared.model_runtime.networks import save_model
from shared.model_runtime.recurrent import RecurrentForecast
from shared.settings.trainer import ParamValue
from shared.trainer_service import EpochRecord, FitFailed, FitOutcome, FitStopped
from train_container.settings import TrainSettings
from train_container.training import (
    GRAD_CLIP,
    EpochLoss,
    NotEnoughData,
    TrainingDiverged,
    TrainingStopped,
    pick_device,
    train_recurrent,
)


def configure_torch_threads(requested: int) -> int:
    """Use `requested` threads, or one per core; more threads than cores only adds contention."""
    threads = requested or max(1, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


class RecurrentTrainer:
    """Fits the GRU or LSTM named by MODEL_TYPE with train_container.training (the bench's code path)."""

    def __init__(self, settings: TrainSettings) -> None:
        self.hyperparameters = settings.hyperparameters()
        self.model_type = ModelType(settings.MODEL_TYPE)
        self.device = pick_device(settings.USE_CUDA)

    def params(self) -> dict[str, ParamValue]:
        return {**self.hyperparameters.params(), "grad_clip": GRAD_CLIP}

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
        def report(record: EpochLoss) -> None:
            if on_epoch is not None:
                on_epoch(record.epoch)

        try:
            result = train_recurrent(
                train,
                self.hyperparameters,
                validation_start=validation_start,
                stop=stop,
                device=self.device,
                on_epoch=report,
            )
        except TrainingStopped as exc:
            raise FitStopped(str(exc)) from exc
        except (TrainingDiverged, NotEnoughData) as exc:
            raise FitFailed(str(exc)) from exc
        # Scored on the CPU, as the inference service serves it: the numbers are the served model's.
        cpu_model = result.model.to("cpu").eval()
        spec = cpu_model.spec
        if spec.input_seq_len != input_len:
            raise FitFailed(f"the model reads windows of {spec.input_seq_len} rows, the service {input_len}")
        forecast = RecurrentForecast(cpu_model, scaler, spec.input_seq_len, spec.output_seq_len, step)

        def save(directory: Path) -> None:
            save_model(cpu_model, directory)

        return FitOutcome(
            forecast=forecast,
            save_model=save,
            history=[EpochRecord(h.epoch, h.train_loss, h.val_loss) for h in result.history],
            best_epoch=result.best_epoch,
            extra_metrics={"train_seconds": result.seconds, "best_val_loss": result.best_val_loss},
            extra_params={"device": result.device, "stop_reason": result.stop_reason},
        )
