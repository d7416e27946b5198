"""Settings: valid environments load, malformed ones stop start-up naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import BaseServiceSettings, SettingsError, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]

VALID_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000/",
    "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
    "AWS_ACCESS_KEY_ID": "test-access-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret-value",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A valid environment (and nothing inherited from the developer's shell)."""
    for name in BaseServiceSettings.model_fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in VALID_ENV.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def failure(capsys: pytest.CaptureFixture[str]) -> tuple[SettingsError, str]:
    with pytest.raises(SettingsError) as raised:
        load_settings(BaseServiceSettings)
    return raised.value, capsys.readouterr().err


def test_valid_environment_loads_with_documented_defaults(env: pytest.MonkeyPatch) -> None:
    settings = load_settings(BaseServiceSettings)

    assert settings.KAFKA_BOOTSTRAP_SERVERS == "127.0.0.1:9092"
    assert settings.MLFLOW_TRACKING_URI == "http://127.0.0.1:5000", "a trailing slash is dropped"
    assert settings.AWS_SECRET_ACCESS_KEY.get_secret_value() == "test-secret-value"
    assert "test-secret-value" not in repr(settings), "secrets never appear in logs or reprs"
    assert settings.KAFKA_SESSION_TIMEOUT_MS == 10000
    assert settings.TOPIC_TRAINING_DATA == "training-data"
    assert settings.TOPIC_PROMOTION_DECISIONS == "promotion-decisions"
    assert settings.BUCKET_PROCESSED == "processed-data"


def test_bootstrap_list_is_normalised_and_log_level_upper_cased(env: pytest.MonkeyPatch) -> None:
    env.setenv("KAFKA_BOOTSTRAP_SERVERS", " kafka-0.kafka:9092 , kafka-1.kafka:9092 ,")
    env.setenv("LOG_LEVEL", "debug")

    settings = load_settings(BaseServiceSettings)

    assert settings.KAFKA_BOOTSTRAP_SERVERS == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert settings.LOG_LEVEL == "DEBUG"


def test_non_integer_number_fails_naming_the_variable(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("KAFKA_SESSION_TIMEOUT_MS", "abc")

    error, stderr = failure(capsys)

    assert error.code == 2
    assert "KAFKA_SESSION_TIMEOUT_MS" in str(error)
    assert "integer" in str(error)
    assert "KAFKA_SESSION_TIMEOUT_MS" in stderr


@pytest.mark.parametrize("value", ["", " , ", ","])
def test_empty_bootstrap_list_fails_naming_the_variable(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    env.setenv("KAFKA_BOOTSTRAP_SERVERS", value)

    error, _ = failure(capsys)

    assert "KAFKA_BOOTSTRAP_SERVERS" in str(error)
    assert "at least one host:port" in str(error)


@pytest.mark.parametrize("value", ["kafka", "kafka:port", ":9092", "kafka:9092,broker"])
def test_bootstrap_entry_without_a_numeric_port_fails_naming_the_variable(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    env.setenv("KAFKA_BOOTSTRAP_SERVERS", value)

    error, _ = failure(capsys)

    assert "KAFKA_BOOTSTRAP_SERVERS" in str(error)
    assert "is not host:port" in str(error)


def test_missing_required_variables_are_all_named(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.delenv("MLFLOW_TRACKING_URI")
    env.delenv("AWS_SECRET_ACCESS_KEY")

    error, _ = failure(capsys)

    assert "MLFLOW_TRACKING_URI: Field required" in str(error)
    assert "AWS_SECRET_ACCESS_KEY: Field required" in str(error)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("MLFLOW_TRACKING_URI", "mlflow:5000", "http(s)://"),
        ("LOG_LEVEL", "VERBOSE", "DEBUG, INFO"),
        ("KAFKA_FETCH_WAIT_MAX_MS", "0", "greater than or equal to 1"),
        ("HANDLER_RETRY_BACKOFF_S", "soon", "number"),
    ],
)
def test_out_of_contract_values_fail_naming_the_variable(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str, reason: str
) -> None:
    env.setenv(name, value)

    error, _ = failure(capsys)

    assert name in str(error)
    assert reason in str(error)


def test_service_entrypoint_with_malformed_setting_exits_2_naming_it_on_stderr() -> None:
    inherited = {k: v for k, v in os.environ.items() if k not in BaseServiceSettings.model_fields}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from shared.settings import load_settings, BaseServiceSettings\n"
            "load_settings(BaseServiceSettings)",
        ],
        env={**inherited, **VALID_ENV, "KAFKA_SESSION_TIMEOUT_MS": "abc", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "KAFKA_SESSION_TIMEOUT_MS" in result.stderr
    assert "Traceback" not in result.stderr, "a configuration mistake is a message, not a crash"


@pytest.mark.parametrize(("value", "reason"), [("http", "integer"), ("70000", "less than or equal to 65535")])
def test_trainer_health_port_out_of_range_fails_naming_the_variable(
    env: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    from train_container.settings import TrainSettings

    env.setenv("MODEL_TYPE", "GRU")
    env.delenv("HEALTH_PORT", raising=False)
    assert load_settings(TrainSettings).HEALTH_PORT == 0, "side by side on one host: any free port"
    env.setenv("HEALTH_PORT", value)

    with pytest.raises(SettingsError) as raised:
        load_settings(TrainSettings)

    assert "HEALTH_PORT" in str(raised.value)
    assert reason in str(raised.value)
