"""Settings every trainer shares; each trainer adds its own hyperparameters in its package."""

from __future__ import annotations

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
