"""What the CLI reads from the environment, and the names and connection settings it hands on.

`flts run` uses an existing stack when KAFKA_BOOTSTRAP_SERVERS, MLFLOW_TRACKING_URI,
MLFLOW_S3_ENDPOINT_URL and both AWS keys are set; otherwise it starts the embedded one.

Topic and bucket names are never spelled out here: they are the TOPIC_*/BUCKET_* fields of
`BaseServiceSettings`, whose defaults are the contract every service follows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import BaseServiceSettings

NamePrefix = Literal["TOPIC_", "BUCKET_"]


class RunnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=True)

    KAFKA_BOOTSTRAP_SERVERS: str | None = None
    MLFLOW_TRACKING_URI: str | None = None
    MLFLOW_S3_ENDPOINT_URL: str | None = None
    AWS_ACCESS_KEY_ID: SecretStr | None = None
    AWS_SECRET_ACCESS_KEY: SecretStr | None = None

    def external_env(self) -> dict[str, str] | None:
        """The services' connection environment for the stack named here; None if none is named."""
        if not (
            self.KAFKA_BOOTSTRAP_SERVERS
            and self.MLFLOW_TRACKING_URI
            and self.MLFLOW_S3_ENDPOINT_URL
            and self.AWS_ACCESS_KEY_ID
            and self.AWS_SECRET_ACCESS_KEY
        ):
            return None
        return connection_env(
            kafka_bootstrap=self.KAFKA_BOOTSTRAP_SERVERS,
            mlflow_url=self.MLFLOW_TRACKING_URI,
            s3_url=self.MLFLOW_S3_ENDPOINT_URL,
            access_key=self.AWS_ACCESS_KEY_ID.get_secret_value(),
            secret_key=self.AWS_SECRET_ACCESS_KEY.get_secret_value(),
        )


def connection_env(
    *, kafka_bootstrap: str, mlflow_url: str, s3_url: str, access_key: str, secret_key: str
) -> dict[str, str]:
    """The environment every FLTS service needs to reach a stack."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "MLFLOW_S3_ENDPOINT_URL": s3_url,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        # The runner waits on every hop; the services' 100 ms default would add up across them.
        "KAFKA_FETCH_WAIT_MAX_MS": "10",
    }


def pipeline_names(prefix: NamePrefix, settings: BaseServiceSettings | None = None) -> tuple[str, ...]:
    """The topic or bucket names in `settings`, or the contract's defaults without settings."""
    fields = [name for name in BaseServiceSettings.model_fields if name.startswith(prefix)]
    if settings is None:
        return tuple(str(BaseServiceSettings.model_fields[name].default) for name in fields)
    return tuple(str(getattr(settings, name)) for name in fields)
