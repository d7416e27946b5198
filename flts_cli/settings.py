"""Settings of `flts run`: optional endpoints of an existing stack.

When KAFKA_BOOTSTRAP_SERVERS, MLFLOW_TRACKING_URI and MLFLOW_S3_ENDPOINT_URL are all set (with the
AWS keys), `flts run` uses that stack; otherwise it starts the embedded one.
"""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class RunnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=True)

    KAFKA_BOOTSTRAP_SERVERS: str | None = None
    MLFLOW_TRACKING_URI: str | None = None
    MLFLOW_S3_ENDPOINT_URL: str | None = None
    AWS_ACCESS_KEY_ID: SecretStr | None = None
    AWS_SECRET_ACCESS_KEY: SecretStr | None = None

    @property
    def external_stack(self) -> bool:
        return all(
            (
                self.KAFKA_BOOTSTRAP_SERVERS,
                self.MLFLOW_TRACKING_URI,
                self.MLFLOW_S3_ENDPOINT_URL,
                self.AWS_ACCESS_KEY_ID,
                self.AWS_SECRET_ACCESS_KEY,
            )
        )
