"""Pydantic models of every Kafka message in DESIGN.md, with the common envelope."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Final = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class ModelType(StrEnum):
    GRU = "GRU"
    LSTM = "LSTM"
    PROPHET = "PROPHET"


class TrainingStatus(StrEnum):
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


class Envelope(BaseModel):
    """Fields every message carries. Unknown fields are ignored; an unknown `v` is refused."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1)
    created_at: datetime = Field(default_factory=utcnow)


class DataClaim(Envelope):
    """Claim check on `training-data` / `inference-data`: where the processed split lives."""

    bucket: str = Field(min_length=1)
    object: str = Field(min_length=1)
    test_object: str = Field(min_length=1)
    meta_object: str = Field(min_length=1)
    size: int = Field(ge=0)
    rows: int = Field(ge=1)
    test_rows: int = Field(default=0, ge=0)
    config_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    identifier: str = Field(min_length=1)
    dataset: str = Field(min_length=1)


class TrainingEvent(Envelope):
    """Progress of one training run on `model-training`."""

    operation: str
    status: TrainingStatus
    model_type: ModelType
    experiment: str
    run_name: str
    run_id: str | None = None
    config_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    identifier: str = Field(min_length=1)
    metrics: dict[str, float] | None = None
    error: str | None = None
    epoch: int | None = None

    @staticmethod
    def operation_for(status: TrainingStatus, model_type: ModelType) -> str:
        verb = {
            TrainingStatus.RUNNING: "Training Started",
            TrainingStatus.SUCCESS: "Trained",
            TrainingStatus.FAILED: "Training Failed",
        }[status]
        return f"{verb}: {model_type.value}"


class ScoreboardEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    model_type: ModelType
    run_id: str
    rmse: float
    mae: float
    mse: float
    score: float
    start_time: int | None = None


class PromotionPointer(Envelope):
    """The live-model pointer: stored in the promotion bucket and sent on `model-selected`."""

    identifier: str = Field(min_length=1)
    config_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    run_id: str = Field(min_length=1)
    model_type: ModelType
    experiment: str
    model_uri: str
    rmse: float
    mae: float
    mse: float
    score: float
    weights: dict[str, float]
    scoreboard: list[ScoreboardEntry]
    timestamp: datetime = Field(default_factory=utcnow)
    missing_model_types: list[ModelType] = Field(default_factory=list)
    note: str | None = None


class DeadLetter(BaseModel):
    """What a consumer writes to `DLQ-<topic>` for a message that can never succeed."""

    model_config = ConfigDict(extra="ignore")

    error: str
    payload: str
    topic: str
    partition: int
    offset: int
    service: str
    created_at: datetime = Field(default_factory=utcnow)


def dlq_topic(topic: str) -> str:
    return f"DLQ-{topic}"


def to_json_bytes(model: BaseModel) -> bytes:
    return model.model_dump_json().encode("utf-8")


def model_dict(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
