"""Settings of the GRU/LSTM trainer (`python -m train_container`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings.trainer import TrainerSettings


class TrainSettings(TrainerSettings):
    """GRU/LSTM trainer (`python -m train_container`). Defaults meet the accuracy bar (bench/accuracy.py)."""

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
    LR_SCHEDULE: Literal["onecycle", "plateau"] = Field(
        default="onecycle", description="onecycle: warm up, then anneal to ~0 over EPOCHS"
    )
    LOSS: Literal["mse", "huber", "mae"] = Field(default="huber", description="Training loss (scaled units)")
    HUBER_DELTA: float = Field(default=0.2, gt=0, description="Huber loss threshold (scaled units)")
    USE_CUDA: bool = Field(default=True, description="Use CUDA when a GPU is present")
    TORCH_THREADS: int = Field(default=1, ge=0, le=256, description="CPU threads; 0 = one per core")

    def model_type_name(self) -> str:
        return self.MODEL_TYPE
