"""Pydantic models of every Kafka message in DESIGN.md, with the common envelope."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class DecisionOutcome(StrEnum):
    PROMOTED = "promoted"
    REFUSED = "refused"


class ScoreboardEntry(BaseModel):
    """One candidate of a decision: the validation figures that rank it, the test ones reported.

    A figure the run did not log is None; a candidate without a score was not ranked.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_type: ModelType
    run_id: str
    score: float | None = None
    val_rmse: float | None = None
    val_mae: float | None = None
    val_mse: float | None = None
    test_rmse: float | None = None
    test_mae: float | None = None
    test_mse: float | None = None
    start_time: int | None = None


class GateCheck(BaseModel):
    """One comparison of the promotion gate for one candidate: `value` must be below `baseline`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1)
    model_type: ModelType
    run_id: str
    value: float | None
    baseline: float | None
    passed: bool


class PromotionPointer(Envelope):
    """The live-model pointer: stored in the promotion bucket and sent on `model-selected`."""

    identifier: str = Field(min_length=1)
    config_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    run_id: str = Field(min_length=1)
    model_type: ModelType
    experiment: str
    model_uri: str
    # The winner's validation figures, the ones its score is computed from.
    rmse: float
    mae: float
    mse: float
    score: float
    weights: dict[str, float]
    scoreboard: list[ScoreboardEntry]
    timestamp: datetime = Field(default_factory=utcnow)
    missing_model_types: list[ModelType] = Field(default_factory=list)
    note: str | None = None


class PromotionDecision(Envelope):
    """The evaluator's answer for one config hash, promoted or refused, on `promotion-decisions`.

    Written once per config hash into the promotion history; a promotion carries the pointer that
    also goes to `model-selected`.
    """

    identifier: str = Field(min_length=1)
    config_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    decision: DecisionOutcome
    model_type: ModelType | None = None
    run_id: str | None = None
    reason: str = Field(min_length=1)
    skill_gate: bool = True
    checks: list[GateCheck] = Field(default_factory=list)
    scoreboard: list[ScoreboardEntry] = Field(default_factory=list)
    weights: dict[str, float] = Field(default_factory=dict)
    missing_model_types: list[ModelType] = Field(default_factory=list)
    pointer: PromotionPointer | None = None
    timestamp: datetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _winner_only_when_promoted(self) -> PromotionDecision:
        if self.decision is DecisionOutcome.PROMOTED:
            if self.pointer is None or self.run_id != self.pointer.run_id:
                raise ValueError("a promotion names its winner and carries its pointer")
            if self.model_type is not self.pointer.model_type or self.config_hash != self.pointer.config_hash:
                raise ValueError("the pointer of a promotion must be the winner's, for this config hash")
        elif self.pointer is not None or self.run_id is not None or self.model_type is not None:
            raise ValueError("a refusal has no winner and no pointer")
        return self

    @property
    def promoted(self) -> bool:
        return self.decision is DecisionOutcome.PROMOTED


class BatchTrigger(StrEnum):
    CLAIM = "claim"  # an `inference-data` claim, forecast with the station's champion
    PROMOTION = "promotion"  # a new champion, forecasting the station's latest claim again


class BatchForecast(Envelope):
    """A batch forecast of a claimed test split, on `batch-forecasts` once its Parquet is stored.

    The Parquet (`bucket`/`object`) holds every row of the split with its one-step rolling
    forecast, then `horizon` rows forecast after the last one; `metrics` are the batch's errors
    in original units (`batch_rmse_down`, `batch_rmse_up`, ... and persistence's twins).
    """

    identifier: str = Field(min_length=1)
    config_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    run_id: str = Field(min_length=1)
    model_type: ModelType
    model_uri: str
    bucket: str = Field(min_length=1)
    object: str = Field(min_length=1)
    size: int = Field(ge=0)
    rows: int = Field(ge=1)
    horizon: int = Field(ge=1)
    metrics: dict[str, float]
    trigger: BatchTrigger
    claim_event_id: str


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
