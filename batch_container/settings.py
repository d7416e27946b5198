"""Settings of the batch forecaster (`python -m batch_container`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings.base import BaseServiceSettings


class BatchSettings(BaseServiceSettings):
    """Which group the replicas share, how far past a claimed split to forecast, where results go."""

    CONSUMER_GROUP: str = Field(
        default="batch-forecast",
        min_length=1,
        description="Consumer group every batch replica shares: each claim and promotion is handled once",
    )
    BATCH_HORIZON: int = Field(
        default=12, ge=1, description="Steps forecast after a claimed split's last row, unless the claim asks"
    )
    BATCH_MAX_HORIZON: int = Field(
        default=720, ge=1, description="Largest horizon a claim may ask for; more is dead-lettered"
    )
    TOPIC_BATCH_FORECASTS: str = Field(
        default="batch-forecasts", min_length=1, description="Where each stored batch forecast is announced"
    )
    BUCKET_BATCH_FORECASTS: str = Field(
        default="batch-forecasts",
        min_length=1,
        description="Batch forecast Parquets and each station's latest claim",
    )
    MODEL_CACHE_SIZE: int = Field(
        default=4, ge=1, le=64, description="Champion models kept loaded between batches"
    )
    HEALTH_PORT: int = Field(default=8080, ge=0, le=65535, description="Port of /healthz and /readyz")

    @model_validator(mode="after")
    def _horizon_within_limit(self) -> BatchSettings:
        if self.BATCH_HORIZON > self.BATCH_MAX_HORIZON:
            raise ValueError("BATCH_HORIZON must not exceed BATCH_MAX_HORIZON")
        return self
