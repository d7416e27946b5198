"""The config hash: stable for equal inputs, different for any change that alters processed data."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from preprocess_container.preprocessing import (
    PreprocessOptions,
    canonical_json,
    config_hash,
    content_digest,
    hash_config,
)
from preprocess_container.settings import PreprocessSettings
from shared.settings import BaseServiceSettings, load_settings

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
DIGESTS = {"PobleSec.csv": content_digest(b"train bytes"), "PobleSec_test.csv": content_digest(b"test")}
CONNECTION_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
}


def _hash(options: PreprocessOptions, salt: str = "", digests: dict[str, str] | None = None) -> str:
    return config_hash(hash_config("PobleSec", options), salt, digests or DIGESTS)


def _reversed_keys(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _reversed_keys(v) if isinstance(v, Mapping) else v for k, v in reversed(list(value.items()))}


def test_hash_is_64_hex_and_equal_for_equal_inputs() -> None:
    first = _hash(PreprocessOptions())
    assert first == _hash(PreprocessOptions())
    assert len(first) == 64
    assert int(first, 16) >= 0


def test_key_order_of_config_and_digests_does_not_change_the_hash() -> None:
    config = hash_config("PobleSec", PreprocessOptions(sample_train_rows=500))
    reordered_config = _reversed_keys(config)
    reordered_digests = dict(reversed(list(DIGESTS.items())))
    assert list(reordered_config) != list(config)
    assert config_hash(config, "s", DIGESTS) == config_hash(reordered_config, "s", reordered_digests)


def test_hash_is_sha256_of_canonical_json() -> None:
    config = hash_config("PobleSec", PreprocessOptions())
    expected = hashlib.sha256(
        canonical_json({"config": config, "extra_hash_salt": "x", "source_digests": DIGESTS}).encode()
    ).hexdigest()
    assert config_hash(config, "x", DIGESTS) == expected
    assert " " not in canonical_json({"b": 1, "a": [1, 2]})
    assert canonical_json({"b": 1, "a": 2}) == '{"a":2,"b":1}'


CHANGED_OPTIONS: dict[str, Any] = {
    "input_seq_len": 12,
    "output_seq_len": 2,
    "sample_train_rows": 1000,
    "sample_test_rows": 200,
    "sample_strategy": "tail",
    "max_gap_steps": 30,
}


def test_every_option_changes_the_hash() -> None:
    base = PreprocessOptions()
    names = {f.name for f in dataclasses.fields(PreprocessOptions)}
    # The seed is covered separately: it only matters for the random strategy.
    assert names - {"sample_seed"} == set(CHANGED_OPTIONS)
    seen = {_hash(base)}
    for name, value in CHANGED_OPTIONS.items():
        digest = _hash(dataclasses.replace(base, **{name: value}))
        assert digest not in seen, name
        seen.add(digest)


def test_seed_changes_the_hash_only_for_random_sampling() -> None:
    random_a = PreprocessOptions(sample_train_rows=100, sample_strategy="random", sample_seed=1)
    random_b = dataclasses.replace(random_a, sample_seed=2)
    assert _hash(random_a) != _hash(random_b)
    head_a = PreprocessOptions(sample_train_rows=100, sample_strategy="head", sample_seed=1)
    assert _hash(head_a) == _hash(dataclasses.replace(head_a, sample_seed=2))


def test_dataset_name_and_salt_change_the_hash() -> None:
    options = PreprocessOptions()
    base = _hash(options)
    assert config_hash(hash_config("LesCorts", options), "", DIGESTS) != base
    assert _hash(options, salt="run-2") != base
    assert _hash(options, salt="run-2") != _hash(options, salt="run-3")


def test_one_byte_change_of_a_source_file_changes_the_hash() -> None:
    original = (DATA_DIR / "PobleSec_test.csv").read_bytes()
    position = len(original) // 2
    changed = original[:position] + bytes([original[position] ^ 0x01]) + original[position + 1 :]
    assert len(changed) == len(original)
    digests = dict(DIGESTS)
    digests["PobleSec_test.csv"] = content_digest(original)
    before = _hash(PreprocessOptions(), digests=digests)
    digests["PobleSec_test.csv"] = content_digest(changed)
    assert _hash(PreprocessOptions(), digests=digests) != before


PREPROCESS_VARS = (
    "DATASET_NAME",
    "IDENTIFIER",
    "EXTRA_HASH_SALT",
    "SAMPLE_TRAIN_ROWS",
    "SAMPLE_TEST_ROWS",
    "SAMPLE_STRATEGY",
    "SAMPLE_SEED",
    "INPUT_SEQ_LEN",
    "OUTPUT_SEQ_LEN",
    "MAX_GAP_STEPS",
    "DATA_DIR",
)


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> PreprocessSettings:
    """Settings from exactly `env` on top of the connection variables (the shell's are removed)."""
    for key in PREPROCESS_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in {**CONNECTION_ENV, **env}.items():
        monkeypatch.setenv(key, value)
    return load_settings(PreprocessSettings)


SETTINGS_CHANGES = {
    "INPUT_SEQ_LEN": "20",
    "OUTPUT_SEQ_LEN": "3",
    "SAMPLE_TRAIN_ROWS": "400",
    "SAMPLE_TEST_ROWS": "80",
    "SAMPLE_STRATEGY": "tail",
    "MAX_GAP_STEPS": "10",
}


def test_every_hashed_setting_reaches_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    own = set(PreprocessSettings.model_fields) - set(BaseServiceSettings.model_fields)
    # A new setting must be classified here: hashed (changes the data) or deliberately not.
    not_in_options = {"DATASET_NAME", "IDENTIFIER", "EXTRA_HASH_SALT", "DATA_DIR", "SAMPLE_SEED"}
    assert own == set(SETTINGS_CHANGES) | not_in_options
    base_settings = _settings(monkeypatch)
    base = config_hash(hash_config(base_settings.DATASET_NAME, base_settings.options()), "", DIGESTS)
    for name, value in SETTINGS_CHANGES.items():
        with monkeypatch.context() as patch:
            settings = _settings(patch, **{name: value})
            digest = config_hash(hash_config(settings.DATASET_NAME, settings.options()), "", DIGESTS)
            assert digest != base, name
    random_settings = _settings(monkeypatch, SAMPLE_STRATEGY="random", SAMPLE_TRAIN_ROWS="50")
    seeded = _settings(monkeypatch, SAMPLE_STRATEGY="random", SAMPLE_TRAIN_ROWS="50", SAMPLE_SEED="7")
    assert _hash(random_settings.options()) != _hash(seeded.options())


def test_identifier_does_not_change_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _settings(monkeypatch)
    named = _settings(monkeypatch, IDENTIFIER="cell-42")
    assert named.identifier == "cell-42"
    assert plain.identifier == plain.DATASET_NAME
    assert _hash(plain.options()) == _hash(named.options())


def test_blank_sample_rows_mean_all_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, SAMPLE_TRAIN_ROWS="", SAMPLE_TEST_ROWS="all")
    assert settings.SAMPLE_TRAIN_ROWS is None
    assert settings.SAMPLE_TEST_ROWS is None
