"""`python -m preprocess_container` / `flts preprocess` refuse a bad configuration with exit code 2."""

from __future__ import annotations

import pytest

from preprocess_container.__main__ import main
from tests.unit.test_config_hash import CONNECTION_ENV


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SAMPLE_STRATEGY", "middle"),
        ("SAMPLE_TRAIN_ROWS", "0"),
        ("INPUT_SEQ_LEN", "ten"),
        ("DATASET_NAME", "../etc/passwd"),
        ("KAFKA_BOOTSTRAP_SERVERS", ""),
    ],
)
def test_an_invalid_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    for key, default in CONNECTION_ENV.items():
        monkeypatch.setenv(key, default)
    monkeypatch.setenv(name, value)
    assert main() == 2
    assert name in capsys.readouterr().err
