"""Settings shared by every service. Only settings classes read the environment."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BaseServiceSettings(BaseSettings):
    """Connection settings every pipeline service needs (Kafka, S3, MLflow, logging)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=True)

    KAFKA_BOOTSTRAP_SERVERS: str = Field(description="Comma-separated host:port list of brokers")
    MLFLOW_TRACKING_URI: str = Field(description="MLflow tracking server URL")
    MLFLOW_S3_ENDPOINT_URL: str = Field(description="S3/MinIO endpoint URL for the object store")
    AWS_ACCESS_KEY_ID: SecretStr = Field(description="Object-store access key (from a Secret)")
    AWS_SECRET_ACCESS_KEY: SecretStr = Field(description="Object-store secret key (from a Secret)")
    AWS_DEFAULT_REGION: str = Field(default="us-east-1", description="Region name boto3 signs with")
    LOG_LEVEL: str = Field(default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL")
    KAFKA_FETCH_WAIT_MAX_MS: int = Field(
        default=100, ge=1, le=5000, description="Broker fetch wait; consumer latency is about half of it"
    )
    KAFKA_SESSION_TIMEOUT_MS: int = Field(
        default=10000, ge=1000, description="Consumer-group session timeout"
    )
    KAFKA_MAX_POLL_INTERVAL_MS: int = Field(
        default=900000, ge=10000, description="Longest time one message may be handled before a rebalance"
    )
    HANDLER_MAX_RETRIES: int = Field(
        default=5,
        ge=0,
        le=100,
        description="Retries of a transient error before the process exits uncommitted",
    )
    HANDLER_RETRY_BACKOFF_S: float = Field(
        default=1.0, ge=0.0, le=60.0, description="First retry delay; doubles per attempt (capped at 30 s)"
    )
    STARTUP_TIMEOUT_S: float = Field(
        default=60.0,
        gt=0,
        description="How long to wait for Kafka/S3/MLflow at start-up before exiting non-zero",
    )

    # Topic and bucket names are settings so tests can isolate themselves; the defaults are
    # the contract in DESIGN.md.
    TOPIC_TRAINING_DATA: str = Field(default="training-data", description="Claims for the trainers")
    TOPIC_INFERENCE_DATA: str = Field(default="inference-data", description="Claims of the test split")
    TOPIC_MODEL_TRAINING: str = Field(default="model-training", description="Trainer progress events")
    TOPIC_MODEL_SELECTED: str = Field(default="model-selected", description="Promotion pointers")
    TOPIC_PROMOTION_DECISIONS: str = Field(
        default="promotion-decisions", description="Every evaluator decision, promoted or refused"
    )
    BUCKET_DATASET: str = Field(default="dataset", description="Raw CSVs")
    BUCKET_PROCESSED: str = Field(default="processed-data", description="Parquet splits and meta.json")
    BUCKET_PROMOTION: str = Field(default="model-promotion", description="Live pointers and history")
    BUCKET_INFERENCE_LOGS: str = Field(default="inference-logs", description="Logged predictions")

    @field_validator("KAFKA_BOOTSTRAP_SERVERS")
    @classmethod
    def _bootstrap_not_empty(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("must list at least one host:port")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return ",".join(servers)

    @field_validator("LOG_LEVEL")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value.rstrip("/")
