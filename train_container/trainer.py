"""The GRU/LSTM part of the trainer: settings -> RecurrentHyperparameters -> train_container.training."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from shared.events import ModelType
from shared.model_runtime.networks import save_model
from shared.settings.trainer import ParamValue
from shared.trainer_service import EpochRecord, FitFailed, FitOutcome, FitStopped
from train_container.settings import TrainSettings
from train_container.training import (
    GRAD_CLIP,
    EpochLoss,
    NotEnoughData,
    TrainingDiverged,
    TrainingStopped,
    one_step_predictions,
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
        test: pd.DataFrame,
        input_len: int,
        stop: threading.Event,
        on_epoch: Callable[[int], None] | None = None,
    ) -> FitOutcome:
        def report(record: EpochLoss) -> None:
            if on_epoch is not None:
                on_epoch(record.epoch)

        try:
            result = train_recurrent(
                train, self.hyperparameters, stop=stop, device=self.device, on_epoch=report
            )
        except TrainingStopped as exc:
            raise FitStopped(str(exc)) from exc
        except (TrainingDiverged, NotEnoughData) as exc:
            raise FitFailed(str(exc)) from exc
        model = result.model
        predictions = one_step_predictions(model, test)
        cpu_model = model.to("cpu")

        def save(directory: Path) -> None:
            save_model(cpu_model, directory)

        return FitOutcome(
            predictions=predictions,
            save_model=save,
            history=[EpochRecord(h.epoch, h.train_loss, h.val_loss) for h in result.history],
            best_epoch=result.best_epoch,
            extra_metrics={"train_seconds": result.seconds, "best_val_loss": result.best_val_loss},
            extra_params={"device": result.device, "stop_reason": result.stop_reason},
        )
