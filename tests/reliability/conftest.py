"""Fixtures of the reliability tier: small processed datasets made by the real preprocess job."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from flts_cli.stack import StackConfig
from shared.events import DataClaim, dlq_topic
from shared.kafka import ensure_topics
from tests.helpers.processes import REPO_ROOT
from tests.helpers.topics import read_topic
from tests.reliability.support import unique

# Small splits keep a GRU epoch under a second; the test split still yields scoring windows.
SMALL_SAMPLE = {"SAMPLE_TRAIN_ROWS": "600", "SAMPLE_TEST_ROWS": "120"}


def run_preprocess(env: dict[str, str], timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "preprocess_container"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture
def preprocess_small(
    stack: StackConfig, service_env: dict[str, str]
) -> Callable[..., tuple[DataClaim, dict[str, str]]]:
    """Run the preprocess job on a small PobleSec sample with a fresh salt (so a fresh config hash)
    and topics of its own; return the training claim it published and the env it ran with."""

    def make(**overrides: str) -> tuple[DataClaim, dict[str, str]]:
        names = {
            "TOPIC_TRAINING_DATA": unique("training-data"),
            "TOPIC_INFERENCE_DATA": unique("inference-data"),
            "BUCKET_PROCESSED": unique("processed"),
            "EXTRA_HASH_SALT": unique("salt"),
            "LOG_LEVEL": "INFO",
            **SMALL_SAMPLE,
            **overrides,
        }
        topics = [names["TOPIC_TRAINING_DATA"], names["TOPIC_INFERENCE_DATA"]]
        ensure_topics(stack.kafka_bootstrap, [*topics, *(dlq_topic(t) for t in topics)])
        env = {**service_env, **names}
        result = run_preprocess(env)
        assert result.returncode == 0, result.stderr[-3000:]
        claims = read_topic(stack.kafka_bootstrap, names["TOPIC_TRAINING_DATA"])
        assert len(claims) == 1, claims
        return DataClaim.model_validate(claims[0][1]), env

    return make


def trainer_env(service_env: dict[str, str], training_topic: str, **extra: str) -> dict[str, Any]:
    """A GRU trainer on its own topics and consumer group, trained briefly."""
    return {
        **service_env,
        "MODEL_TYPE": "GRU",
        "TOPIC_TRAINING_DATA": training_topic,
        "TOPIC_MODEL_TRAINING": unique("model-training"),
        "KAFKA_GROUP_ID": unique("trainer-gru"),
        "EPOCHS": "2",
        "HIDDEN_SIZE": "8",
        "NUM_LAYERS": "1",
        "USE_CUDA": "false",
        "HANDLER_RETRY_BACKOFF_S": "0.2",
        "LOG_LEVEL": "INFO",
        **extra,
    }
