"""The preprocess job against the real broker and S3 server of the session stack."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from flts_cli.stack import StackConfig
from preprocess_container.job import EXIT_OK, EXIT_REFUSED, ensure_job_topics, execute
from preprocess_container.settings import PreprocessSettings
from shared.data import FEATURE_COLUMNS, KPI_COLUMNS
from shared.events import DataClaim, DeadLetter, dlq_topic
from shared.kafka import EventProducer
from shared.processed import SplitRows, load_meta
from shared.settings import load_settings
from shared.storage import ObjectStore
from tests.helpers.topics import read_topic as read_keyed_records

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"


def isolated_env(unique_name: Callable[[str], str]) -> dict[str, str]:
    """Bucket and topic names no other test uses."""
    return {
        "BUCKET_DATASET": unique_name("dataset"),
        "BUCKET_PROCESSED": unique_name("processed"),
        "TOPIC_TRAINING_DATA": unique_name("training-data"),
        "TOPIC_INFERENCE_DATA": unique_name("inference-data"),
        "LOG_LEVEL": "INFO",
    }


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 15.0) -> list[bytes]:
    """Every message on `topic` from the beginning, by partition assignment (no group join wait)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        values: list[bytes] = []

        def poll_until(seconds: float, enough: int) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and len(values) < enough:
                msg = consumer.poll(0.1)
                value = msg.value() if msg is not None and not msg.error() else None
                if value is not None:
                    values.append(value)

        poll_until(timeout_s, expected)
        # A short extra poll catches messages beyond the expected count.
        poll_until(0.5, sys.maxsize)
        return values
    finally:
        consumer.close()


def run_module(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "preprocess_container"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def producer(stack: StackConfig) -> Iterator[EventProducer]:
    made = EventProducer(stack.kafka_bootstrap, client_id="preprocess-test")
    yield made
    made.close()


def settings_for(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> PreprocessSettings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(PreprocessSettings)
    ensure_job_topics(settings)
    return settings


def test_job_writes_the_processed_split_and_claims_point_at_it(
    service_env: dict[str, str],
    stack: StackConfig,
    object_store: ObjectStore,
    unique_name: Callable[[str], str],
) -> None:
    names = isolated_env(unique_name)
    started = time.perf_counter()
    result = run_module({**service_env, **names, "DATASET_NAME": "PobleSec"})
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]

    # The shipped files were uploaded to the (empty) dataset bucket, byte for byte.
    for name in ("PobleSec.csv", "PobleSec_test.csv"):
        uploaded = object_store.get_bytes(names["BUCKET_DATASET"], name)
        assert uploaded == (DATA_DIR / name).read_bytes()

    training = [
        DataClaim.model_validate_json(v)
        for v in read_topic(stack.kafka_bootstrap, names["TOPIC_TRAINING_DATA"], 1)
    ]
    inference = [
        DataClaim.model_validate_json(v)
        for v in read_topic(stack.kafka_bootstrap, names["TOPIC_INFERENCE_DATA"], 1)
    ]
    assert len(training) == 1
    assert len(inference) == 1
    claim = training[0]
    assert claim.bucket == names["BUCKET_PROCESSED"]
    assert claim.identifier == "PobleSec"
    assert claim.dataset == "PobleSec"
    assert claim.object == f"{claim.config_hash}/train.parquet"
    assert inference[0].config_hash == claim.config_hash
    assert inference[0].object == claim.test_object
    # Keyed by station, so one station's claims stay in order while stations spread over partitions.
    for topic in (names["TOPIC_TRAINING_DATA"], names["TOPIC_INFERENCE_DATA"]):
        assert [key for key, _ in read_keyed_records(stack.kafka_bootstrap, topic)] == ["PobleSec"]

    for key, rows in ((claim.object, 15927), (claim.test_object, 3982)):
        assert object_store.exists(claim.bucket, key)
        frame = object_store.get_parquet(claim.bucket, key)
        assert list(frame.columns) == list(FEATURE_COLUMNS)
        assert len(frame) == rows
        assert not frame.isna().to_numpy().any()
        assert isinstance(frame.index, pd.DatetimeIndex)
        assert frame.index.name == "time"
        assert (np.diff(frame.index) == pd.Timedelta(minutes=2)).all()
        assert (frame.dtypes == np.float64).all()
    assert claim.size == object_store.size(claim.bucket, claim.object)
    assert (claim.rows, claim.test_rows) == (15927, 3982)

    # The JSON names DESIGN.md documents, and the model every reader parses it with.
    meta = object_store.get_json(claim.bucket, claim.meta_object)
    assert load_meta(object_store, claim.bucket, claim.meta_object).rows == SplitRows(train=15927, test=3982)
    assert meta["config_hash"] == claim.config_hash
    assert meta["columns"] == list(FEATURE_COLUMNS)
    assert meta["rows"] == {"train": 15927, "test": 3982}
    assert meta["step_seconds"] == 120
    assert meta["repairs"]["train"]["nan_cells"] == 22
    assert set(meta["source_digests"]) == {"PobleSec.csv", "PobleSec_test.csv"}
    assert meta["scaler"]["columns"] == list(KPI_COLUMNS)
    assert meta["config"]["extra_hash_salt"] == ""
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    finished = [entry for entry in logged if entry.get("msg") == "preprocess finished"]
    assert finished and finished[0]["reused"] is False
    # The full pair takes a few seconds; the bound leaves room for a busy machine.
    assert finished[0]["timings"]["total"] < 15.0, finished[0]["timings"]
    assert seconds < 60.0


def test_same_settings_reuse_the_objects_and_a_new_salt_makes_new_ones(
    monkeypatch_stack_env: StackConfig,
    monkeypatch: pytest.MonkeyPatch,
    object_store: ObjectStore,
    producer: EventProducer,
    unique_name: Callable[[str], str],
) -> None:
    names = isolated_env(unique_name)
    env = {**names, "SAMPLE_TRAIN_ROWS": "300", "SAMPLE_TEST_ROWS": "60", "SAMPLE_STRATEGY": "tail"}
    settings = settings_for(monkeypatch, env)
    assert execute(settings, object_store, producer) == EXIT_OK
    processed = names["BUCKET_PROCESSED"]
    [first_hash] = {key.split("/")[0] for key in object_store.list_keys(processed)}
    meta_key = f"{first_hash}/meta.json"
    first_meta = object_store.get_json(processed, meta_key)
    first_modified = object_store.client.head_object(Bucket=processed, Key=meta_key)["LastModified"]
    assert first_meta["rows"] == {"train": 300, "test": 60}

    assert execute(settings, object_store, producer) == EXIT_OK
    assert object_store.get_json(processed, meta_key)["created_at"] == first_meta["created_at"]
    assert object_store.client.head_object(Bucket=processed, Key=meta_key)["LastModified"] == first_modified
    claims = [
        DataClaim.model_validate_json(v)
        for v in read_topic(monkeypatch_stack_env.kafka_bootstrap, names["TOPIC_TRAINING_DATA"], 2)
    ]
    assert [c.config_hash for c in claims] == [first_hash, first_hash]
    assert len({c.event_id for c in claims}) == 2

    salted = settings_for(monkeypatch, {**env, "EXTRA_HASH_SALT": "again"})
    assert execute(salted, object_store, producer) == EXIT_OK
    hashes = {key.split("/")[0] for key in object_store.list_keys(processed)}
    assert len(hashes) == 2
    [second_hash] = hashes - {first_hash}
    second_meta = object_store.get_json(processed, f"{second_hash}/meta.json")
    assert second_meta["config"]["extra_hash_salt"] == "again"
    assert object_store.exists(processed, f"{second_hash}/train.parquet")

    # A meta.json that breaks the contract does not count as a finished set: it is processed again.
    object_store.put_json(processed, meta_key, {**first_meta, "scaler": {"kind": "minmax"}})
    assert execute(settings, object_store, producer) == EXIT_OK
    repaired = load_meta(object_store, processed, meta_key)
    assert repaired.config_hash == first_hash
    assert repaired.created_at > datetime.fromisoformat(first_meta["created_at"])


def test_a_missing_dataset_object_exits_10_with_a_dead_letter(
    service_env: dict[str, str],
    stack: StackConfig,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    names = isolated_env(unique_name)
    result = run_module({**service_env, **names, "DATASET_NAME": "Nowhere", "DATA_DIR": str(tmp_path)})
    # 10, the code the Job's podFailurePolicy fails at once on; 1 would be retried as a crash.
    assert EXIT_REFUSED == 10
    assert result.returncode == EXIT_REFUSED, result.stderr[-3000:]
    assert "Nowhere.csv does not exist" in result.stderr
    letters = read_topic(stack.kafka_bootstrap, dlq_topic(names["TOPIC_TRAINING_DATA"]), 1)
    assert len(letters) == 1
    letter = DeadLetter.model_validate_json(letters[0])
    assert letter.service == "preprocess"
    assert letter.topic == names["TOPIC_TRAINING_DATA"]
    assert "Nowhere.csv does not exist" in letter.error
    request = json.loads(letter.payload)
    assert request["dataset"] == "Nowhere"
    assert "AWS_SECRET_ACCESS_KEY" not in letter.payload
    assert stack.secret_key not in letter.payload
    assert read_topic(stack.kafka_bootstrap, names["TOPIC_TRAINING_DATA"], 0, timeout_s=0.5) == []


def test_a_dataset_without_a_kpi_column_is_refused_to_the_dlq(
    monkeypatch_stack_env: StackConfig,
    monkeypatch: pytest.MonkeyPatch,
    object_store: ObjectStore,
    producer: EventProducer,
    unique_name: Callable[[str], str],
) -> None:
    names = isolated_env(unique_name)
    settings = settings_for(monkeypatch, {**names, "DATASET_NAME": "Broken"})
    train = pd.read_csv(DATA_DIR / "ElBorn.csv", nrows=200).drop(columns=["rb_up_var"])
    test = pd.read_csv(DATA_DIR / "ElBorn_test.csv", nrows=50)
    object_store.ensure_bucket(names["BUCKET_DATASET"])
    for key, frame in (("Broken.csv", train), ("Broken_test.csv", test)):
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        object_store.put_bytes(names["BUCKET_DATASET"], key, buffer.getvalue().encode())

    assert execute(settings, object_store, producer) == EXIT_REFUSED
    letters = read_topic(monkeypatch_stack_env.kafka_bootstrap, dlq_topic(names["TOPIC_TRAINING_DATA"]), 1)
    assert len(letters) == 1
    assert "missing KPI column(s): rb_up_var" in DeadLetter.model_validate_json(letters[0]).error
    assert object_store.list_keys(names["BUCKET_PROCESSED"]) == []


def test_a_crash_is_not_taken_for_a_refusal_and_publishes_no_dead_letter(
    monkeypatch_stack_env: StackConfig,
    monkeypatch: pytest.MonkeyPatch,
    object_store: ObjectStore,
    producer: EventProducer,
    unique_name: Callable[[str], str],
) -> None:
    """A bug in the job escapes `execute`, so the process dies with Python's own exit code 1, which
    the Job retries, and nothing reports the data as refused."""
    names = isolated_env(unique_name)
    settings = settings_for(monkeypatch, {**names, "DATASET_NAME": "PobleSec", "DATA_DIR": str(DATA_DIR)})

    def bug(*_args: object, **_kwargs: object) -> None:
        raise ZeroDivisionError("a bug, not a data problem")

    monkeypatch.setattr("preprocess_container.job.prepare_splits", bug)
    with pytest.raises(ZeroDivisionError):
        execute(settings, object_store, producer)
    dlq = dlq_topic(names["TOPIC_TRAINING_DATA"])
    assert read_topic(monkeypatch_stack_env.kafka_bootstrap, dlq, 0, timeout_s=0.5) == []
    assert object_store.list_keys(names["BUCKET_PROCESSED"]) == []
