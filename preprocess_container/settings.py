"""Settings of the preprocess job (`python -m preprocess_container`, `flts preprocess`).

Besides the connection settings of BaseServiceSettings (KAFKA_BOOTSTRAP_SERVERS, MLFLOW_TRACKING_URI,
MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY required; topic and bucket names):

| variable | type | default | description |
|---|---|---|---|
| `DATASET_NAME` | str | `PobleSec` | reads `<name>.csv` and `<name>_test.csv` from the dataset bucket |
| `IDENTIFIER` | str | dataset name | identifier the claims carry; not part of the hash |
| `EXTRA_HASH_SALT` | str | empty | mixed into `config_hash`; a new salt forces new objects |
| `SAMPLE_TRAIN_ROWS` | int >= 1 | all rows | train rows kept (empty, `all`, `none` = all) |
| `SAMPLE_TEST_ROWS` | int >= 1 | all rows | test rows kept (empty, `all`, `none` = all) |
| `SAMPLE_STRATEGY` | head, tail, random | `head` | first N, last N, or N contiguous rows at a seeded start |
| `SAMPLE_SEED` | int >= 0 | `0` | seed of `random` (ignored and not hashed otherwise) |
| `INPUT_SEQ_LEN` | int >= 1 | `10` | window length; each split keeps >= INPUT + OUTPUT rows |
| `OUTPUT_SEQ_LEN` | int >= 1 | `1` | forecast horizon in 2-minute steps |
| `MAX_GAP_STEPS` | int >= 0 | `720` | longest run of missing steps interpolated; longer is refused |
| `DATA_DIR` | path | repo `data/`, else `/app/data` | shipped CSVs, uploaded when the bucket lacks them |
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from preprocess_container.preprocessing import DEFAULT_MAX_GAP_STEPS, PreprocessOptions
from shared.settings.base import BaseServiceSettings

_REPO_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
_CONTAINER_DATA_DIR = Path("/app/data")


class PreprocessSettings(BaseServiceSettings):
    """Which dataset to prepare, how to sample it, and what goes into the config hash."""

    DATASET_NAME: str = Field(
        default="PobleSec",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Dataset objects <name>.csv and <name>_test.csv in the dataset bucket",
    )
    IDENTIFIER: str | None = Field(
        default=None, description="Identifier carried by the claims; default: the dataset name"
    )
    EXTRA_HASH_SALT: str = Field(default="", description="Mixed into config_hash to force reprocessing")
    SAMPLE_TRAIN_ROWS: int | None = Field(default=None, ge=1, description="Train rows kept; unset = all")
    SAMPLE_TEST_ROWS: int | None = Field(default=None, ge=1, description="Test rows kept; unset = all")
    SAMPLE_STRATEGY: Literal["head", "tail", "random"] = Field(
        default="head", description="head, tail, or random (one contiguous block at a seeded start)"
    )
    SAMPLE_SEED: int = Field(default=0, ge=0, description="Seed of the random sampling strategy")
    INPUT_SEQ_LEN: int = Field(default=10, ge=1, description="Input window length in rows")
    OUTPUT_SEQ_LEN: int = Field(default=1, ge=1, description="Forecast horizon in rows")
    MAX_GAP_STEPS: int = Field(
        default=DEFAULT_MAX_GAP_STEPS,
        ge=0,
        description="Longest run of missing 2-minute steps filled by interpolation; longer is refused",
    )
    DATA_DIR: Path | None = Field(
        default=None, description="Folder of the shipped CSVs; default: the repo's data/, else /app/data"
    )

    @field_validator("SAMPLE_TRAIN_ROWS", "SAMPLE_TEST_ROWS", "IDENTIFIER", "DATA_DIR", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # A ConfigMap cannot leave a key out conditionally; an empty value means "not set".
        if isinstance(value, str) and value.strip().lower() in {"", "all", "none"}:
            return None
        return value

    @field_validator("IDENTIFIER")
    @classmethod
    def _identifier_text(cls, value: str | None) -> str | None:
        return value.strip() if value is not None else None

    @property
    def identifier(self) -> str:
        return self.IDENTIFIER or self.DATASET_NAME

    @property
    def data_dir(self) -> Path:
        if self.DATA_DIR is not None:
            return self.DATA_DIR
        return _REPO_DATA_DIR if _REPO_DATA_DIR.is_dir() else _CONTAINER_DATA_DIR

    @property
    def train_object(self) -> str:
        return f"{self.DATASET_NAME}.csv"

    @property
    def test_object(self) -> str:
        return f"{self.DATASET_NAME}_test.csv"

    def options(self) -> PreprocessOptions:
        return PreprocessOptions(
            input_seq_len=self.INPUT_SEQ_LEN,
            output_seq_len=self.OUTPUT_SEQ_LEN,
            sample_train_rows=self.SAMPLE_TRAIN_ROWS,
            sample_test_rows=self.SAMPLE_TEST_ROWS,
            sample_strategy=self.SAMPLE_STRATEGY,
            sample_seed=self.SAMPLE_SEED,
            max_gap_steps=self.MAX_GAP_STEPS,
        )

    def request(self) -> dict[str, object]:
        """The job's request without any connection detail or secret (for a dead letter)."""
        return {
            "dataset": self.DATASET_NAME,
            "identifier": self.identifier,
            "extra_hash_salt": self.EXTRA_HASH_SALT,
            "sample_train_rows": self.SAMPLE_TRAIN_ROWS,
            "sample_test_rows": self.SAMPLE_TEST_ROWS,
            "sample_strategy": self.SAMPLE_STRATEGY,
            "sample_seed": self.SAMPLE_SEED,
            "input_seq_len": self.INPUT_SEQ_LEN,
            "output_seq_len": self.OUTPUT_SEQ_LEN,
            "max_gap_steps": self.MAX_GAP_STEPS,
            "dataset_bucket": self.BUCKET_DATASET,
            "objects": [self.train_object, self.test_object],
        }
