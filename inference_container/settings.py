"""Settings of the inference service (`python -m inference_container`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.settings.base import BaseServiceSettings


class InferenceSettings(BaseServiceSettings):
    """HTTP serving, request limits, model following and prediction logging."""

    INFERENCE_HOST: str = Field(default="0.0.0.0", description="Address uvicorn binds")
    INFERENCE_PORT: int = Field(default=8000, ge=0, le=65535, description="Port uvicorn binds (0 = any)")
    WORKERS: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes serving one pre-bound socket, each with its own model and consumer",
    )
    # NoDecode: a comma list in the environment, not the JSON pydantic-settings expects of a tuple.
    IDENTIFIERS: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        default=None,
        description="Stations to serve (comma list); unset serves every station with a champion",
    )
    MAX_METRIC_IDENTIFIERS: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="Distinct identifier label values in /metrics; later stations count as _other",
    )
    MAX_INFERENCE_LENGTH: int = Field(default=720, ge=1, le=100_000, description="Largest forecast horizon")
    MAX_ROWS: int = Field(default=5000, ge=1, le=1_000_000, description="Most rows one request may carry")
    MAX_BODY_BYTES: int = Field(
        default=2_000_000, ge=1024, le=512_000_000, description="Largest request body accepted"
    )
    RETRY_AFTER_S: int = Field(
        default=5, ge=1, le=3600, description="Retry-After sent while a station has no model loaded"
    )
    MODEL_RELOAD_BACKOFF_S: float = Field(
        default=2.0, gt=0, le=300, description="First wait before retrying a failed model load"
    )
    MODEL_RELOAD_MAX_BACKOFF_S: float = Field(
        default=30.0, gt=0, le=3600, description="Longest wait between retries of a failed model load"
    )
    POINTER_POLL_S: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How often the live pointers are re-read (and stations discovered) from the bucket",
    )
    MODEL_CACHE_DIR: str | None = Field(
        default=None, description="Where downloaded artifacts go (default: a temporary folder)"
    )
    INFERENCE_LOG_ENABLED: bool = Field(default=False, description="Append predictions to inference-logs")
    INFERENCE_LOG_BATCH_SIZE: int = Field(
        default=200, ge=1, le=100_000, description="Prediction records per inference-logs object"
    )
    INFERENCE_LOG_FLUSH_S: float = Field(
        default=5.0, gt=0, le=3600, description="Longest a record waits before its batch is written"
    )
    INFERENCE_LOG_QUEUE_MAX: int = Field(
        default=10_000, ge=1, le=10_000_000, description="Records queued before new ones are dropped"
    )
    MAX_BATCH: int = Field(
        default=64, ge=1, le=4096, description="Most concurrent windows predicted in one forward pass"
    )
    BATCH_ACROSS_STATIONS: bool = Field(
        default=True,
        description="One stacked pass for concurrent windows of stations' models of one kind and shape",
    )
    TORCH_THREADS: int = Field(default=1, ge=1, le=64, description="torch intra-op threads per process")
    ACCESS_LOG: bool = Field(default=False, description="uvicorn access log (costly at high request rates)")
    PREDICT_FAST_PATH: bool = Field(
        default=True, description="Answer POST /predict from raw ASGI messages, before FastAPI routing"
    )

    @field_validator("IDENTIFIERS", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """ "A, B,,A" -> ("A", "B"); blank is unset. A station name cannot hold "/": it is a key prefix."""
        if value is None:
            return None
        items = value.split(",") if isinstance(value, str) else list(value)
        names = tuple(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))
        for name in names:
            if "/" in name:
                raise ValueError(f"identifier {name!r} must not contain '/'")
        return names or None
