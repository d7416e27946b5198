"""`processed-data/<config_hash>/meta.json`: what the preprocess job promises the trainers.

The job writes it through `ProcessedMeta`, last, after both Parquet splits; every reader parses it
through `load_meta`, so a meta.json that breaks the contract is refused the same way everywhere
(the job processes the set again, a trainer dead-letters the claim). Field names are the JSON
names DESIGN.md lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
)

from shared.data import FEATURE_COLUMNS, KPI_COLUMNS, MinMaxScaler
from shared.settings.loader import describe_validation_error
from shared.storage import ObjectStore


class InvalidMeta(ValueError):
    """meta.json is not JSON or breaks the contract; the message names the object and the fields."""


def _scaler(value: object) -> MinMaxScaler:
    if isinstance(value, MinMaxScaler):
        scaler = value
    elif isinstance(value, Mapping):
        scaler = MinMaxScaler.from_dict(value)
    else:
        raise ValueError(f"expected the scaler's parameters as an object, got {type(value).__name__}")
    if scaler.columns != KPI_COLUMNS:
        raise ValueError(f"scaler columns {list(scaler.columns)} differ from {list(KPI_COLUMNS)}")
    return scaler


# Stored as plain numbers (never a pickle) and checked by MinMaxScaler's own rules.
Scaler = Annotated[MinMaxScaler, PlainValidator(_scaler), PlainSerializer(MinMaxScaler.to_dict)]


class SplitRows(BaseModel):
    model_config = ConfigDict(frozen=True)

    train: int = Field(ge=1)
    test: int = Field(ge=1)


class SourceObjects(BaseModel):
    """Where the raw CSVs were read from."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    train: str
    test: str


class ProcessedMeta(BaseModel):
    """meta.json of one processed set. Unknown fields are ignored so that an older trainer still
    reads the metadata of a newer preprocess job."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    config_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    dataset: str = Field(min_length=1)
    identifier: str = Field(min_length=1)
    # Everything the hash covers, plus the salt: enough to reproduce the set.
    config: dict[str, Any]
    source_digests: dict[str, str]
    source_objects: SourceObjects
    columns: tuple[str, ...]
    rows: SplitRows
    scaler: Scaler
    step_seconds: int = Field(gt=0)
    repairs: dict[str, Any]
    sampling: dict[str, Any]
    created_at: AwareDatetime

    @field_validator("columns")
    @classmethod
    def _contract_columns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value != FEATURE_COLUMNS:
            raise ValueError(f"columns {list(value)} differ from {list(FEATURE_COLUMNS)}")
        return value


def load_meta(store: ObjectStore, bucket: str, key: str) -> ProcessedMeta:
    """Read and validate a meta.json; raises ObjectNotFound when it is missing, InvalidMeta when
    it is not JSON or breaks the contract."""
    where = f"s3://{bucket}/{key}"
    try:
        value = store.get_json(bucket, key)
    except ValueError as exc:
        raise InvalidMeta(f"{where} is not JSON: {exc}") from None
    try:
        return ProcessedMeta.model_validate(value)
    except ValidationError as exc:
        raise InvalidMeta(
            f"{where} breaks the processed-data contract: {describe_validation_error(exc)}"
        ) from None
