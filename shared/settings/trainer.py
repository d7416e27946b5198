"""Settings every trainer shares, and the base of each trainer's hyperparameters.

A trainer's hyperparameters are declared once, in a `Hyperparameters` model whose fields are named
as the environment variables that set them; the trainer's settings class inherits that model, so
the same field is read from the environment, handed to the fitting code (`from_settings`) and
logged to MLflow (`params`).
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field

from shared.settings.base import BaseServiceSettings

ParamValue = str | int | float | bool


class Hyperparameters(BaseModel):
    """Fields that decide what a trainer fits; every field is an MLflow param of the run."""

    @classmethod
    def from_settings(cls, settings: BaseModel) -> Self:
        """This model's fields as `settings` (a settings class that inherits them) read them."""
        return cls.model_validate(settings.model_dump(include=set(cls.model_fields)))

    def params(self) -> dict[str, ParamValue]:
        """MLflow params: each field lower-cased, or under its serialization alias when it has one.

        Call it on the model `from_settings` returns: on a settings object it would list every setting.
        """
        return {
            info.serialization_alias or name.lower(): getattr(self, name)
            for name, info in type(self).model_fields.items()
        }


class WindowShape(Hyperparameters):
    """The window every trainer is scored on, and the seed of the run."""

    INPUT_SEQ_LEN: int = Field(
        default=10,
        ge=1,
        le=1000,
        serialization_alias="input_sequence_length",
        description="Rows of 17 columns per input window",
    )
    OUTPUT_SEQ_LEN: int = Field(
        default=1,
        ge=1,
        le=100,
        serialization_alias="output_sequence_length",
        description="Rows of 11 KPIs predicted per window",
    )
    SEED: int = Field(default=42, ge=0, description="Seed of weights and batch order")


class TrainerSettings(BaseServiceSettings, WindowShape):
    """What every trainer shares: the consumer group, the window shape, the validation period and
    MLflow retries."""

    KAFKA_GROUP_ID: str = Field(default="", description="Consumer group; empty = trainer-<model type>")
    # 0 by default, unlike the evaluator's 8080: the embedded stack runs every trainer side by side
    # on one host, where one fixed port would let only the first one start. Manifests set 8080.
    HEALTH_PORT: int = Field(
        default=0,
        ge=0,
        le=65535,
        description=(
            "Port of /healthz and /readyz, served from before the start-up waits; 0 = any free port (logged)"
        ),
    )
    MLFLOW_MAX_RETRIES: int = Field(
        default=4, ge=0, le=50, description="MLflow call attempts beyond the first"
    )
    MLFLOW_RETRY_BACKOFF_S: float = Field(
        default=1.0, ge=0.0, le=60.0, description="First delay between MLflow attempts (doubles)"
    )
    # Shared, not a model's hyperparameter: every model type must be judged on the same rows.
    VALIDATION_FRACTION: float = Field(
        default=0.15,
        gt=0.0,
        lt=0.9,
        description=(
            "Tail of the TRAIN split: validation period for early stopping, model choice and the skill gate"
        ),
    )

    def model_type_name(self) -> str:
        raise NotImplementedError

    def group_id(self) -> str:
        return self.KAFKA_GROUP_ID or f"trainer-{self.model_type_name().lower()}"
