"""GRU, LSTM and Prophet trainers as real processes on the real broker, S3 server and MLflow.

One claim on a unique training topic -> RUNNING then SUCCESS from each trainer, three FINISHED
MLflow runs with the contract's tags, params, metrics and artifacts. The same claim again is
acknowledged without retraining; a claim whose Parquet is missing ends as FAILED plus a DLQ letter.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from mlflow.tracking import MlflowClient

from flts_cli.stack import StackConfig
from preprocess_container.preprocessing import PreprocessOptions, prepare_splits, read_raw_csv
from shared.accuracy import SUMMARY_METRICS
from shared.data import FEATURE_COLUMNS
from shared.events import DataClaim, DeadLetter, TrainingEvent, TrainingStatus, dlq_topic
from shared.kafka import EventProducer, ensure_topics
from shared.mlflow_utils import find_runs
from shared.processed import ProcessedMeta, SourceObjects, SplitRows
from shared.storage import ObjectStore

REPO = Path(__file__).resolve().parents[2]
TYPES = ("GRU", "LSTM", "PROPHET")
EVENT_TIMEOUT_S = 150.0
# Beyond SUMMARY_METRICS: per-KPI validation errors and the horizon-30 family, which only reports.
SCORES = (
    *SUMMARY_METRICS,
    "val_mae_down",
    "baseline_val_mae_up",
    "test_rmse_down",
    "test_rmse_up",
    "test_h30_rmse",
    "baseline_test_h30_rmse",
    "test_h30_rmse_down",
    "baseline_test_h30_rmse_up",
)


@dataclass(frozen=True)
class Isolated:
    """A claims topic, an events topic and a processed-data bucket no other test uses."""

    suffix: str
    topic_claims: str
    topic_events: str
    bucket: str
    env: dict[str, str]


@dataclass(frozen=True)
class Trainers(Isolated):
    processes: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]


def _new_hash() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def write_processed(store: ObjectStore, bucket: str, config_hash: str) -> DataClaim:
    """A small sample of PobleSec through the preprocess module, stored as the contract says."""
    train_raw = read_raw_csv((REPO / "data" / "PobleSec.csv").read_bytes(), "train")
    test_raw = read_raw_csv((REPO / "data" / "PobleSec_test.csv").read_bytes(), "test")
    prepared = prepare_splits(
        train_raw, test_raw, PreprocessOptions(sample_train_rows=720, sample_test_rows=120)
    )
    prefix = config_hash
    size = store.put_parquet(bucket, f"{prefix}/train.parquet", prepared.train)
    store.put_parquet(bucket, f"{prefix}/test.parquet", prepared.test)
    meta = ProcessedMeta(
        config_hash=config_hash,
        dataset="PobleSec",
        identifier="PobleSec",
        config={"test": "trainers integration sample"},
        source_digests={},
        source_objects=SourceObjects(bucket="dataset", train="PobleSec.csv", test="PobleSec_test.csv"),
        columns=FEATURE_COLUMNS,
        rows=SplitRows(train=len(prepared.train), test=len(prepared.test)),
        scaler=prepared.scaler,
        step_seconds=120,
        repairs=prepared.repairs,
        sampling=prepared.sampling,
        created_at=datetime(2026, 11, 30, tzinfo=UTC),
    )
    store.put_json(bucket, f"{prefix}/meta.json", meta.model_dump(mode="json"))
    return claim_for(bucket, config_hash, size, len(prepared.train), len(prepared.test))


def claim_for(bucket: str, config_hash: str, size: int = 1, rows: int = 1, test_rows: int = 0) -> DataClaim:
    return DataClaim(
        bucket=bucket,
        object=f"{config_hash}/train.parquet",
        test_object=f"{config_hash}/test.parquet",
        meta_object=f"{config_hash}/meta.json",
        size=size,
        rows=rows,
        test_rows=test_rows,
        config_hash=config_hash,
        identifier="PobleSec",
        dataset="PobleSec",
    )


def isolated(stack: StackConfig, service_env: dict[str, str], object_store: ObjectStore) -> Isolated:
    suffix = uuid.uuid4().hex[:8]
    topic_claims, topic_events = f"training-data-{suffix}", f"model-training-{suffix}"
    bucket = f"processed-{suffix}"
    object_store.ensure_bucket(bucket)
    ensure_topics(stack.kafka_bootstrap, [topic_claims, topic_events, dlq_topic(topic_claims)])
    env = {
        **service_env,
        "TOPIC_TRAINING_DATA": topic_claims,
        "TOPIC_MODEL_TRAINING": topic_events,
        "BUCKET_PROCESSED": bucket,
    }
    return Isolated(suffix, topic_claims, topic_events, bucket, env)


@pytest.fixture(scope="module")
def trainers(
    stack: StackConfig,
    service_env: dict[str, str],
    object_store: ObjectStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Trainers]:
    names = isolated(stack, service_env, object_store)
    env = {
        **names.env,
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        # tiny and quick: the accuracy bar is bench/accuracy.py's job
        "EPOCHS": "2",
        "HIDDEN_SIZE": "8",
        "NUM_LAYERS": "1",
        "PATIENCE": "2",
        "PROPHET_WORKERS": "2",
        "PROPHET_CHANGEPOINTS": "3",
        "PROPHET_DAILY_FOURIER": "3",
        "PROPHET_WEEKLY_FOURIER": "1",
        "HANDLER_RETRY_BACKOFF_S": "0.2",
        "MLFLOW_RETRY_BACKOFF_S": "0.2",
    }
    logs_dir = tmp_path_factory.mktemp("trainer-logs")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    try:
        for model_type in TYPES:
            module = "nonml_container" if model_type == "PROPHET" else "train_container"
            proc_env = {**env, "KAFKA_GROUP_ID": f"trainer-{model_type.lower()}-{names.suffix}"}
            if model_type != "PROPHET":
                proc_env["MODEL_TYPE"] = model_type
            logs[model_type] = logs_dir / f"{model_type}.log"
            with open(logs[model_type], "wb") as log_file:
                processes[model_type] = subprocess.Popen(
                    [sys.executable, "-m", module],
                    cwd=REPO,
                    env=proc_env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
        yield Trainers(
            names.suffix, names.topic_claims, names.topic_events, names.bucket, env, processes, logs
        )
    finally:
        for proc in processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


class EventReader:
    """Reads one topic from the beginning in its own group; collects decoded messages."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "session.timeout.ms": 10000,
            }
        )
        self.consumer.subscribe([topic])
        self.seen: list[dict[str, object]] = []

    def until(self, done: Callable[[list[dict[str, object]]], bool], timeout_s: float, why: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.5)
            value = msg.value() if msg is not None and not msg.error() else None
            if value is not None:
                self.seen.append(json.loads(value))
            if done(self.seen):
                return
        raise AssertionError(f"timed out waiting for {why}; saw {self.seen}")

    def close(self) -> None:
        self.consumer.close()


def _events(seen: list[dict[str, object]], config_hash: str) -> list[TrainingEvent]:
    events = [TrainingEvent.model_validate(m) for m in seen]
    return [e for e in events if e.config_hash == config_hash]


def _finished(
    seen: list[dict[str, object]], config_hash: str, status: TrainingStatus, count: int = 1
) -> bool:
    events = _events(seen, config_hash)
    return all(
        sum(1 for e in events if e.model_type.value == t and e.status == status) >= count for t in TYPES
    )


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found |= _artifact_paths(client, run_id, item.path)
        else:
            found.add(item.path)
    return found


def _tail(trainers: Trainers) -> str:
    return "\n".join(f"--- {t}\n{p.read_text()[-3000:]}" for t, p in trainers.logs.items() if p.exists())


def test_claim_trains_gru_lstm_prophet_with_runs_and_events(
    trainers: Trainers, stack: StackConfig, object_store: ObjectStore
) -> None:
    config_hash = _new_hash()
    claim = write_processed(object_store, trainers.bucket, config_hash)
    reader = EventReader(stack.kafka_bootstrap, trainers.topic_events)
    producer = EventProducer(stack.kafka_bootstrap, client_id="test-trainers")
    try:
        producer.publish(trainers.topic_claims, config_hash, claim)
        try:
            reader.until(
                lambda seen: _finished(seen, config_hash, TrainingStatus.SUCCESS),
                EVENT_TIMEOUT_S,
                "SUCCESS from GRU, LSTM and PROPHET",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_tail(trainers)}") from None
        events = _events(reader.seen, config_hash)
        client = MlflowClient(stack.mlflow_url)
        run_ids = {}
        for model_type in TYPES:
            mine = [e for e in events if e.model_type.value == model_type]
            statuses = [e.status for e in mine]
            assert statuses[:2] == [TrainingStatus.RUNNING, TrainingStatus.SUCCESS], (model_type, statuses)
            running, success = mine[0], mine[1]
            assert running.run_id == success.run_id and success.run_id
            assert success.operation == f"Trained: {model_type}"
            assert success.experiment == ("NonML" if model_type == "PROPHET" else "Default")
            metrics = success.metrics or {}
            for key in SCORES:
                assert key in metrics and math.isfinite(metrics[key]), (model_type, key, metrics.get(key))
            run = client.get_run(success.run_id)
            run_ids[model_type] = success.run_id
            assert run.info.status == "FINISHED"
            assert run.info.run_name == model_type
            assert run.data.tags["config_hash"] == config_hash
            assert run.data.tags["model_type"] == model_type
            assert run.data.tags["identifier"] == "PobleSec"
            assert run.data.params["input_sequence_length"] == "10"
            assert run.data.params["output_sequence_length"] == "1"
            assert run.data.params["config_hash"] == config_hash
            assert run.data.params["validation_fraction"] == "0.15"
            if model_type == "PROPHET":
                assert run.data.params["prophet_n_changepoints"] == "3"
                assert run.data.params["prophet_workers"] == "2"
            else:
                assert run.data.params["num_layers"] == "1"
                assert run.data.params["epochs"] == "2"
                assert run.data.params["grad_clip"] == "1.0"
            for key in SCORES:
                assert run.data.metrics[key] == pytest.approx(metrics[key]), (model_type, key)
            artifacts = _artifact_paths(client, success.run_id)
            for expected in (
                f"{model_type}/MLmodel",
                f"{model_type}/artifacts/scaler.json",
                f"{model_type}/artifacts/preprocess_config.json",
                "plots/forecast_down_up.png",
                "plots/loss_curve.png",
            ):
                assert expected in artifacts, (model_type, expected, artifacts)
            # One copy of the model, scaler and config: the MLflow model's.
            assert {a.split("/", 1)[0] for a in artifacts} == {model_type, "plots"}, artifacts
            model_files = {a for a in artifacts if a.startswith(f"{model_type}/artifacts/model/")}
            if model_type == "PROPHET":
                assert f"{model_type}/artifacts/model/prophet_spec.json" in model_files
                assert f"{model_type}/artifacts/model/down.json" in model_files
            else:
                assert model_files == {
                    f"{model_type}/artifacts/model/model_spec.json",
                    f"{model_type}/artifacts/model/state_dict.pt",
                }
                losses = client.get_metric_history(success.run_id, "val_loss")
                assert sorted(m.step for m in losses) == [1, 2]
        # every model was scored on the same rows: the persistence numbers agree exactly
        for baseline in ("baseline_val_rmse", "baseline_test_rmse", "baseline_test_h30_rmse"):
            baselines = {t: client.get_run(r).data.metrics[baseline] for t, r in run_ids.items()}
            assert len(set(baselines.values())) == 1, (baseline, baselines)

        # Redelivery of the same claim: acknowledged with the existing run, nothing retrained.
        producer.publish(trainers.topic_claims, config_hash, claim)
        reader.until(
            lambda seen: _finished(seen, config_hash, TrainingStatus.SUCCESS, count=2),
            60,
            "SUCCESS re-published for the redelivered claim",
        )
        for model_type in TYPES:
            successes = [
                e
                for e in _events(reader.seen, config_hash)
                if e.model_type.value == model_type and e.status == TrainingStatus.SUCCESS
            ]
            assert {e.run_id for e in successes} == {run_ids[model_type]}
            republished = successes[-1].metrics or {}
            for key in SCORES:
                assert key in republished, (model_type, key)
            assert len(find_runs(client, config_hash, model_type, ("FINISHED", "RUNNING", "FAILED"))) == 1
    finally:
        reader.close()
        producer.close()
    for model_type, proc in trainers.processes.items():
        assert proc.poll() is None, f"{model_type} trainer exited\n{_tail(trainers)}"


def test_claim_with_missing_parquet_fails_and_goes_to_the_dlq(trainers: Trainers, stack: StackConfig) -> None:
    config_hash = _new_hash()
    claim = claim_for(trainers.bucket, config_hash)
    reader = EventReader(stack.kafka_bootstrap, trainers.topic_events)
    dlq = EventReader(stack.kafka_bootstrap, dlq_topic(trainers.topic_claims))
    producer = EventProducer(stack.kafka_bootstrap, client_id="test-trainers-poison")
    try:
        producer.publish(trainers.topic_claims, config_hash, claim)
        reader.until(
            lambda seen: _finished(seen, config_hash, TrainingStatus.FAILED), 60, "FAILED from every trainer"
        )
        for event in _events(reader.seen, config_hash):
            if event.status == TrainingStatus.FAILED:
                assert "does not exist" in (event.error or "")
        dlq.until(
            lambda seen: sum(config_hash in str(DeadLetter.model_validate(m).payload) for m in seen) >= 3,
            30,
            "three DLQ letters",
        )
    finally:
        reader.close()
        dlq.close()
        producer.close()
    for model_type, proc in trainers.processes.items():
        assert proc.poll() is None, f"{model_type} trainer stopped serving after a poison claim"


def test_trainer_exits_cleanly_on_sigterm(trainers: Trainers) -> None:
    """Runs last in this module: SIGTERM stops the idle trainers with exit code 0."""
    for proc in trainers.processes.values():
        proc.send_signal(signal.SIGTERM)
    for model_type, proc in trainers.processes.items():
        assert proc.wait(timeout=30) == 0, f"{model_type}\n{_tail(trainers)}"


def _start_gru(env: dict[str, str], log_path: Path, **overrides: str) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "train_container"],
            cwd=REPO,
            env={**env, "MODEL_TYPE": "GRU", **overrides},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
def test_sigterm_during_training_kills_the_run_and_the_claim_is_trained_after_restart(
    stack: StackConfig,
    service_env: dict[str, str],
    object_store: ObjectStore,
    tmp_path: Path,
) -> None:
    names = isolated(stack, service_env, object_store)
    env = {
        **names.env,
        "KAFKA_GROUP_ID": f"trainer-gru-{names.suffix}",
        "HIDDEN_SIZE": "8",
        "NUM_LAYERS": "1",
    }
    config_hash = _new_hash()
    claim = write_processed(object_store, names.bucket, config_hash)
    reader = EventReader(stack.kafka_bootstrap, names.topic_events)
    producer = EventProducer(stack.kafka_bootstrap, client_id="test-trainers-sigterm")
    log_path = tmp_path / "gru.log"
    # endless training: only SIGTERM ends it
    first = _start_gru(env, log_path, EPOCHS="10000", PATIENCE="1000", MAX_TRAIN_SECONDS="3600")
    second: subprocess.Popen[bytes] | None = None
    try:
        producer.publish(names.topic_claims, config_hash, claim)

        def running(seen: list[dict[str, object]]) -> bool:
            return any(e.status == TrainingStatus.RUNNING for e in _events(seen, config_hash))

        try:
            reader.until(running, 90, "RUNNING from the first trainer")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_path.read_text()[-3000:]}") from None
        killed_run = next(
            e.run_id for e in _events(reader.seen, config_hash) if e.status == TrainingStatus.RUNNING
        )
        assert killed_run is not None
        time.sleep(2.0)  # well inside training
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, log_path.read_text()[-3000:]
        client = MlflowClient(stack.mlflow_url)
        assert client.get_run(killed_run).info.status == "KILLED"
        assert not any(e.status == TrainingStatus.SUCCESS for e in _events(reader.seen, config_hash))

        second = _start_gru(env, log_path, EPOCHS="1")
        reader.until(
            lambda seen: any(e.status == TrainingStatus.SUCCESS for e in _events(seen, config_hash)),
            90,
            "SUCCESS after the restart (the uncommitted claim redelivered)",
        )
        success = next(e for e in _events(reader.seen, config_hash) if e.status == TrainingStatus.SUCCESS)
        assert success.run_id is not None and success.run_id != killed_run
        assert client.get_run(success.run_id).info.status == "FINISHED"
    finally:
        reader.close()
        producer.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
