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
    AWS_DEFAULT_REGION: str = "us-east-1"
    LOG_LEVEL: str = "INFO"
    KAFKA_FETCH_WAIT_MAX_MS: int = Field(default=100, ge=1, le=5000)
    KAFKA_SESSION_TIMEOUT_MS: int = Field(default=10000, ge=1000)
    KAFKA_MAX_POLL_INTERVAL_MS: int = Field(default=900000, ge=10000)
    HANDLER_MAX_RETRIES: int = Field(default=5, ge=0, le=100)
    HANDLER_RETRY_BACKOFF_S: float = Field(default=1.0, ge=0.0, le=60.0)
    STARTUP_TIMEOUT_S: float = Field(default=60.0, gt=0)

    # Topic and bucket names are settings so tests can isolate themselves; the defaults are
    # the contract in DESIGN.md.
    TOPIC_TRAINING_DATA: str = "training-data"
    TOPIC_INFERENCE_DATA: str = "inference-data"
    TOPIC_MODEL_TRAINING: str = "model-training"
    TOPIC_MODEL_SELECTED: str = "model-selected"
    BUCKET_DATASET: str = "dataset"
    BUCKET_PROCESSED: str = "processed-data"
    BUCKET_PROMOTION: str = "model-promotion"
    BUCKET_INFERENCE_LOGS: str = "inference-logs"

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
