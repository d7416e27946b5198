"""Settings of the evaluator (`python -m eval_container`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.events import ModelType
from shared.settings.base import BaseServiceSettings


class EvaluatorSettings(BaseServiceSettings):
    """Which model types must report, how they are scored, and when to give up waiting."""

    EXPECTED_MODEL_TYPES: Annotated[list[ModelType], NoDecode] = Field(
        default_factory=lambda: [ModelType.GRU, ModelType.LSTM, ModelType.PROPHET],
        description="Comma-separated model types waited for (up to PROMOTION_TIMEOUT_S) before deciding",
    )
    W_RMSE: float = Field(default=0.5, ge=0.0, description="Weight of val_rmse in the score")
    W_MAE: float = Field(default=0.3, ge=0.0, description="Weight of val_mae in the score")
    W_MSE: float = Field(default=0.2, ge=0.0, description="Weight of val_mse in the score")
    PROMOTION_TIMEOUT_S: float = Field(
        default=180.0,
        gt=0.0,
        description="Decide among the types that succeeded once this has passed since the first "
        "result of the config hash, even when others failed or never reported",
    )
    SKILL_GATE: bool = Field(
        default=True,
        description="Promote only a candidate whose val_rmse_down, val_rmse_up and val_rmse beat "
        "persistence's; none passing is a refusal",
    )
    HEALTH_PORT: int = Field(default=8080, ge=0, le=65535, description="Port of /healthz and /readyz")
    CONSUMER_GROUP: str = Field(
        default="evaluator", min_length=1, description="Consumer group of the evaluator"
    )
    REGISTERED_MODEL_PREFIX: str = Field(
        default="flts-", description="Registered model name = prefix + identifier"
    )
    CHAMPION_ALIAS: str = Field(
        default="champion", min_length=1, description="MLflow registered-model alias moved to the winner"
    )

    @field_validator("EXPECTED_MODEL_TYPES", mode="before")
    @classmethod
    def _split_types(cls, value: object) -> object:
        if isinstance(value, str):
            names = [part.strip().upper() for part in value.split(",") if part.strip()]
            if not names:
                raise ValueError("must name at least one of GRU, LSTM, PROPHET")
            return names
        return value

    @field_validator("EXPECTED_MODEL_TYPES")
    @classmethod
    def _unique_types(cls, value: list[ModelType]) -> list[ModelType]:
        if not value:
            raise ValueError("must name at least one of GRU, LSTM, PROPHET")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _some_weight(self) -> EvaluatorSettings:
        if self.W_RMSE + self.W_MAE + self.W_MSE <= 0:
            raise ValueError("W_RMSE + W_MAE + W_MSE must be positive")
        return self

    @property
    def weights(self) -> dict[str, float]:
        return {"rmse": self.W_RMSE, "mae": self.W_MAE, "mse": self.W_MSE}
