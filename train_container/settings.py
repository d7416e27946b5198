"""Settings of the GRU/LSTM trainer (`python -m train_container`) and its hyperparameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shared.settings.trainer import TrainerSettings, WindowShape

# Depth per model type when none is asked for: on PobleSec (bench/accuracy.py, one-cycle, 20 epochs)
# a second GRU layer doubled the cost without gaining accuracy, while one LSTM layer fell short of
# the bar on `up` for some seeds and two layers met it.
DEFAULT_NUM_LAYERS = {"GRU": 1, "LSTM": 2}


class RecurrentHyperparameters(WindowShape):
    """One GRU/LSTM training run. Defaults meet the accuracy bar (bench/accuracy.py); the service
    reads them from the environment through TrainSettings, the bench and the tests build them."""

    MODEL_TYPE: Literal["GRU", "LSTM"] = Field(description="Which recurrent model this trainer trains")
    EPOCHS: int = Field(default=20, ge=1, le=10000, description="Most epochs (early stopping may end sooner)")
    BATCH_SIZE: int = Field(default=256, ge=1, le=65536, description="Windows per optimiser step")
    LEARNING_RATE: float = Field(default=1e-2, gt=0, le=1.0, description="Peak rate under onecycle")
    HIDDEN_SIZE: int = Field(default=64, ge=1, le=4096, description="Recurrent hidden units")
    NUM_LAYERS: int = Field(default=0, ge=0, le=8, description="0 = 1 for GRU, 2 for LSTM")
    DROPOUT: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout between stacked layers")
    PATIENCE: int = Field(
        default=10, ge=1, le=1000, description="Epochs without validation gain before stopping"
    )
    VALIDATION_FRACTION: float = Field(
        default=0.15, gt=0.0, lt=0.9, description="Tail of the TRAIN split used for early stopping"
    )
    MAX_TRAIN_SECONDS: float = Field(default=100.0, gt=0, description="Wall-clock cap on training")
    # onecycle steps per batch; plateau keeps the rate and halves it after PATIENCE/3 stale epochs.
    LR_SCHEDULE: Literal["onecycle", "plateau"] = Field(
        default="onecycle", description="onecycle: warm up, then anneal to ~0 over EPOCHS"
    )
    LOSS: Literal["mse", "huber", "mae"] = Field(default="huber", description="Training loss (scaled units)")
    HUBER_DELTA: float = Field(default=0.2, gt=0, description="Huber loss threshold (scaled units)")

    @model_validator(mode="after")
    def _default_depth(self) -> RecurrentHyperparameters:
        # Resolved here so that the run's params log the depth actually trained.
        if self.NUM_LAYERS == 0:
            self.NUM_LAYERS = DEFAULT_NUM_LAYERS[self.MODEL_TYPE]
        return self


class TrainSettings(TrainerSettings, RecurrentHyperparameters):
    """GRU/LSTM trainer (`python -m train_container`): the hyperparameters plus where to run them."""

    USE_CUDA: bool = Field(default=True, description="Use CUDA when a GPU is present")
    TORCH_THREADS: int = Field(default=1, ge=0, le=256, description="CPU threads; 0 = one per core")

    def model_type_name(self) -> str:
        return self.MODEL_TYPE

    def hyperparameters(self) -> RecurrentHyperparameters:
        return RecurrentHyperparameters.from_settings(self)
