"""Trainer settings: TrainSettings (GRU/LSTM, train_container), ProphetSettings (nonml_container)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings.base import BaseServiceSettings


class TrainerSettings(BaseServiceSettings):
    """What every trainer shares: the consumer group, the window shape and MLflow retries."""

    KAFKA_GROUP_ID: str = Field(default="", description="Consumer group; empty = trainer-<model type>")
    INPUT_SEQ_LEN: int = Field(default=10, ge=1, le=1000, description="Rows of 17 columns per input window")
    OUTPUT_SEQ_LEN: int = Field(default=1, ge=1, le=100, description="Rows of 11 KPIs predicted per window")
    SEED: int = Field(default=42, ge=0, description="Seed of weights and batch order")
    MLFLOW_MAX_RETRIES: int = Field(
        default=4, ge=0, le=50, description="MLflow call attempts beyond the first"
    )
    MLFLOW_RETRY_BACKOFF_S: float = Field(
        default=1.0, ge=0.0, le=60.0, description="First delay between MLflow attempts (doubles)"
    )

    def model_type_name(self) -> str:
        raise NotImplementedError

    def group_id(self) -> str:
        return self.KAFKA_GROUP_ID or f"trainer-{self.model_type_name().lower()}"


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


class ProphetSettings(TrainerSettings):
    """Prophet trainer (`python -m nonml_container`): one model per KPI, fitted on 10-minute means."""

    MODEL_TYPE: Literal["PROPHET"] = Field(default="PROPHET", description="Always PROPHET")
    PROPHET_WORKERS: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Fitting processes; 1 = in-process (each fit on 10-minute means is sub-second)",
    )
    PROPHET_CHANGEPOINTS: int = Field(default=10, ge=0, le=500, description="Trend changepoints")
    PROPHET_CHANGEPOINT_PRIOR_SCALE: float = Field(default=0.05, gt=0, description="Trend flexibility")
    PROPHET_SEASONALITY_MODE: Literal["additive", "multiplicative"] = Field(
        default="additive", description="How seasonality combines with the trend"
    )
    PROPHET_DAILY_FOURIER: int = Field(
        default=10, ge=1, le=100, description="Fourier order of the daily cycle"
    )
    PROPHET_WEEKLY_FOURIER: int = Field(
        default=3, ge=1, le=100, description="Fourier order of the weekly cycle"
    )
    PROPHET_FIT_RESAMPLE_MINUTES: int = Field(
        default=10, ge=0, le=1440, description="Fit on means of buckets this long; 0 = on the raw rows"
    )
    PROPHET_FIT_TIMEOUT_S: float = Field(default=900.0, gt=0, description="Limit on fitting all KPIs")

    def model_type_name(self) -> str:
        return self.MODEL_TYPE
