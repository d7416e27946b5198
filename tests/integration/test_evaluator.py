"""The evaluator as a real process against the real broker, S3 server and MLflow server.

MLflow runs are created here with the contract's tags and metrics and a stand-in for each model
file the evaluator requires to exist (no training), then the trainers' `model-training` events are
published by hand. What comes out: a decision on
`promotion-decisions` for every config hash, and the pointer on `model-selected` for promotions.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from mlflow.tracking import MlflowClient

from flts_cli.stack import StackConfig, free_port
from shared import promotion
from shared.events import (
    DecisionOutcome,
    ModelType,
    PromotionDecision,
    PromotionPointer,
    TrainingEvent,
    TrainingStatus,
    dlq_topic,
)
from shared.kafka import EventProducer, ensure_topics
from shared.mlflow_utils import ensure_experiment, experiment_for, required_model_artifacts
from shared.scoring import DEFAULT_WEIGHTS as WEIGHTS
from shared.scoring import Candidate, build_decision, select
from shared.storage import ObjectStore
from tests.helpers.processes import ServiceProcess
from tests.helpers.topics import Record, read_topic
from tests.helpers.waiting import wait_until


def config_hash_for(label: str) -> str:
    return hashlib.sha256(f"{label}-{uuid.uuid4().hex}".encode()).hexdigest()


@dataclass
class Topics:
    training: str
    selected: str
    decisions: str
    bucket: str
    group: str


class EvaluatorProcess(ServiceProcess):
    """`python -m eval_container` with its own topics, bucket and consumer group."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__("eval_container", env, log_path)
        self.port = int(env["HEALTH_PORT"])

    def start_ready(self, timeout_s: float = 30.0) -> EvaluatorProcess:
        """Start the process and return once /readyz answers 200."""
        return self.start().wait_until(
            lambda: self.probe("/readyz")[0] == 200, timeout_s, "the evaluator's /readyz"
        )

    def probe(self, path: str) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}


class Harness:
    """Creates MLflow runs, publishes training events and reads what the evaluator produced."""

    def __init__(self, stack: StackConfig, store: ObjectStore, topics: Topics) -> None:
        self.stack = stack
        self.store = store
        self.topics = topics
        self.client = MlflowClient(tracking_uri=stack.mlflow_url)
        self.producer = EventProducer(stack.kafka_bootstrap, client_id="test-evaluator")
        self.artifact_dir: Path | None = None

    def make_run(
        self,
        config_hash: str,
        identifier: str,
        model_type: ModelType,
        rmse: float,
        baseline_rmse: float = 1.0,
        status: str = "FINISHED",
        up: float | None = None,
        test_rmse: float | None = None,
        validation: bool = True,
        model_files: bool = True,
    ) -> str:
        """A run whose validation RMSE is `rmse` against persistence's `baseline_rmse`; `down` and
        `up` are in proportion unless `up` says otherwise. `validation=False`: a run logged only
        test figures (as trainers did before validation metrics existed). `model_files=False`:
        a run whose model files are not in the object store."""
        experiment_id = ensure_experiment(self.client, experiment_for(model_type.value))
        run = self.client.create_run(
            experiment_id,
            run_name=model_type.value,
            tags={
                "config_hash": config_hash,
                "model_type": model_type.value,
                "identifier": identifier,
                "dataset": identifier,
            },
        )
        run_id: str = run.info.run_id
        tested = rmse if test_rmse is None else test_rmse
        metrics = {
            "test_rmse": tested,
            "test_mae": tested * 0.8,
            "test_mse": tested * tested,
            "baseline_test_rmse": baseline_rmse,
            "baseline_test_mae": baseline_rmse * 0.8,
            "baseline_test_mse": baseline_rmse**2,
            "test_rmse_down": tested * 100,
            "test_rmse_up": tested * 50,
        }
        if validation:
            metrics |= {
                "val_rmse": rmse,
                "val_mae": rmse * 0.8,
                "val_mse": rmse * rmse,
                "baseline_val_rmse": baseline_rmse,
                "baseline_val_mae": baseline_rmse * 0.8,
                "baseline_val_mse": baseline_rmse**2,
                "val_rmse_down": rmse * 100,
                "val_rmse_up": rmse * 50 if up is None else up,
                "baseline_val_rmse_down": baseline_rmse * 100,
                "baseline_val_rmse_up": baseline_rmse * 50,
            }
        for name, value in metrics.items():
            self.client.log_metric(run_id, name, value)
        if model_files:
            log_model_files(self.client, run_id, model_type)
        self.client.set_terminated(run_id, status=status)
        return run_id

    def event(
        self,
        config_hash: str,
        identifier: str,
        model_type: ModelType,
        run_id: str | None,
        status: TrainingStatus = TrainingStatus.SUCCESS,
    ) -> TrainingEvent:
        return TrainingEvent(
            operation=TrainingEvent.operation_for(status, model_type),
            status=status,
            model_type=model_type,
            experiment=experiment_for(model_type.value),
            run_name=model_type.value,
            run_id=run_id,
            config_hash=config_hash,
            identifier=identifier,
            metrics={"val_rmse": 0.1} if status is TrainingStatus.SUCCESS else None,
            error="CUDA out of memory" if status is TrainingStatus.FAILED else None,
        )

    def publish(self, event: TrainingEvent | bytes, key: str) -> None:
        self.producer.publish(self.topics.training, key, event)

    def read_topic(self, topic: str) -> list[Record]:
        return read_topic(self.stack.kafka_bootstrap, topic, timeout_s=15)

    def consumed_all(self) -> bool:
        """True once the evaluator's group has committed every message on the training topic."""
        consumer = Consumer({"bootstrap.servers": self.stack.kafka_bootstrap, "group.id": self.topics.group})
        try:
            topic = self.topics.training
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
            for tp in committed:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
                if max(tp.offset, 0) < high:
                    return False
            return True
        finally:
            consumer.close()

    def wait_consumed(self, timeout_s: float = 30.0) -> None:
        wait_until(self.consumed_all, timeout_s, "the evaluator to commit every event")

    def history(self, identifier: str, config_hash: str) -> list[str]:
        return promotion.list_history(self.store, self.topics.bucket, identifier, config_hash)

    def selected(self, identifier: str) -> list[dict[str, Any]]:
        return [value for key, value in self.read_topic(self.topics.selected) if key == identifier]

    def decisions(self, identifier: str) -> list[PromotionDecision]:
        return [
            PromotionDecision.model_validate(value)
            for key, value in self.read_topic(self.topics.decisions)
            if key == identifier
        ]

    def stored_decisions(self, identifier: str, config_hash: str) -> list[PromotionDecision]:
        keys = promotion.list_decisions(self.store, self.topics.bucket, identifier, config_hash)
        return [promotion.load_decision(self.store, self.topics.bucket, key) for key in keys]

    def dead_letters(self) -> list[dict[str, Any]]:
        return [value for _key, value in self.read_topic(dlq_topic(self.topics.training))]


def log_model_files(client: MlflowClient, run_id: str, model_type: ModelType) -> None:
    """A small, non-empty stand-in for every file the run's model needs, where a trainer puts
    it: the evaluator checks that they exist, not what they hold."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for path in required_model_artifacts(model_type.value):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(f"stand-in for {path}\n")
        client.log_artifacts(run_id, folder)


def make_topics(stack: StackConfig, store: ObjectStore) -> Topics:
    suffix = uuid.uuid4().hex[:10]
    topics = Topics(
        training=f"model-training-{suffix}",
        selected=f"model-selected-{suffix}",
        decisions=f"promotion-decisions-{suffix}",
        bucket=f"model-promotion-{suffix}",
        group=f"evaluator-{suffix}",
    )
    # Created before the evaluator subscribes: a late topic may stay invisible for minutes.
    ensure_topics(
        stack.kafka_bootstrap,
        [topics.training, topics.selected, topics.decisions, dlq_topic(topics.training)],
    )
    store.ensure_bucket(topics.bucket)
    return topics


def evaluator_env(service_env: dict[str, str], topics: Topics, **extra: str) -> dict[str, str]:
    return {
        **service_env,
        "TOPIC_MODEL_TRAINING": topics.training,
        "TOPIC_MODEL_SELECTED": topics.selected,
        "TOPIC_PROMOTION_DECISIONS": topics.decisions,
        "BUCKET_PROMOTION": topics.bucket,
        "CONSUMER_GROUP": topics.group,
        "HEALTH_PORT": str(free_port()),
        "HANDLER_RETRY_BACKOFF_S": "0.2",
        "LOG_LEVEL": "INFO",
        **extra,
    }


@pytest.fixture(scope="module")
def shared_run(
    stack: StackConfig,
    service_env: dict[str, str],
    object_store: ObjectStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Harness, EvaluatorProcess]]:
    """One evaluator for the tests that need no restart; each test uses its own config hash."""
    topics = make_topics(stack, object_store)
    process = EvaluatorProcess(
        evaluator_env(service_env, topics, PROMOTION_TIMEOUT_S="3"),
        tmp_path_factory.mktemp("evaluator") / "evaluator.log",
    )
    harness = Harness(stack, object_store, topics)
    try:
        process.start_ready()
        yield harness, process
    finally:
        assert process.stop() == 0, process.tail()


def test_three_successes_with_duplicates_promote_exactly_once_on_both_topics(
    shared_run: tuple[Harness, EvaluatorProcess],
) -> None:
    harness, process = shared_run
    config_hash, identifier = config_hash_for("dup"), f"Site-{uuid.uuid4().hex[:6]}"
    runs = {
        ModelType.GRU: harness.make_run(config_hash, identifier, ModelType.GRU, rmse=0.30),
        ModelType.LSTM: harness.make_run(config_hash, identifier, ModelType.LSTM, rmse=0.10),
        ModelType.PROPHET: harness.make_run(config_hash, identifier, ModelType.PROPHET, rmse=0.50),
    }
    events = {t: harness.event(config_hash, identifier, t, run_id) for t, run_id in runs.items()}
    # Out of order, with duplicates before and after the last missing type arrives.
    for model_type in (ModelType.PROPHET, ModelType.PROPHET, ModelType.GRU, ModelType.LSTM, ModelType.GRU):
        harness.publish(events[model_type], config_hash)
    harness.publish(events[ModelType.LSTM], config_hash)
    harness.wait_consumed()

    history = harness.history(identifier, config_hash)
    selected = harness.selected(identifier)
    assert len(history) == 1, process.tail()
    assert len(selected) == 1, process.tail()
    pointer = PromotionPointer.model_validate(selected[0])
    assert pointer.run_id == runs[ModelType.LSTM]
    assert pointer.model_type is ModelType.LSTM
    assert pointer.model_uri == f"runs:/{runs[ModelType.LSTM]}/LSTM"
    assert pointer.config_hash == config_hash
    assert pointer.missing_model_types == []
    assert [e.model_type for e in pointer.scoreboard] == [ModelType.LSTM, ModelType.GRU, ModelType.PROPHET]
    stored = promotion.load_history(harness.store, harness.topics.bucket, history[0])
    assert stored.event_id == pointer.event_id
    live = promotion.load_current_pointer(harness.store, harness.topics.bucket, identifier)
    assert live is not None and live.run_id == runs[ModelType.LSTM]
    # The MLflow UI shows the champion through the registered model's alias.
    version = harness.client.get_model_version_by_alias(f"flts-{identifier}", "champion")
    assert version.run_id == runs[ModelType.LSTM]
    # The decision goes to promotion-decisions, once, with the pointer model-selected carried.
    (decision,) = harness.decisions(identifier)
    assert decision.decision is DecisionOutcome.PROMOTED
    assert (decision.model_type, decision.run_id) == (ModelType.LSTM, runs[ModelType.LSTM])
    assert decision.pointer == pointer
    assert len(decision.checks) == 9 and all(check.passed for check in decision.checks)
    assert [e.model_type for e in decision.scoreboard] == [ModelType.LSTM, ModelType.GRU, ModelType.PROPHET]
    assert harness.stored_decisions(identifier, config_hash) == [decision]


def test_failed_type_promotes_among_the_rest_after_timeout(
    shared_run: tuple[Harness, EvaluatorProcess],
) -> None:
    harness, process = shared_run
    config_hash, identifier = config_hash_for("failed"), f"Site-{uuid.uuid4().hex[:6]}"
    gru = harness.make_run(config_hash, identifier, ModelType.GRU, rmse=0.20)
    prophet = harness.make_run(config_hash, identifier, ModelType.PROPHET, rmse=0.40)
    first = harness.event(config_hash, identifier, ModelType.GRU, gru)
    harness.publish(first, config_hash)
    # A second hash where every type fails: after the same timeout nothing may be promoted.
    doomed_hash, doomed_id = config_hash_for("doomed"), f"Site-{uuid.uuid4().hex[:6]}"
    for model_type in (ModelType.GRU, ModelType.LSTM, ModelType.PROPHET):
        harness.publish(
            harness.event(doomed_hash, doomed_id, model_type, None, TrainingStatus.FAILED), doomed_hash
        )
    harness.publish(
        harness.event(config_hash, identifier, ModelType.LSTM, None, TrainingStatus.FAILED), config_hash
    )
    harness.publish(harness.event(config_hash, identifier, ModelType.PROPHET, prophet), config_hash)
    harness.wait_consumed()

    wait_until(lambda: harness.selected(identifier), 20, "a promotion after the timeout")
    (message,) = harness.selected(identifier)
    pointer = PromotionPointer.model_validate(message)
    # Not before PROMOTION_TIMEOUT_S (3 s) counted from the first event of the hash.
    assert (pointer.timestamp - first.created_at).total_seconds() >= 3.0, process.tail()
    assert pointer.run_id == gru
    assert pointer.missing_model_types == [ModelType.LSTM]
    assert pointer.note is not None and "LSTM" in pointer.note
    assert len(harness.history(identifier, config_hash)) == 1
    (decision,) = harness.decisions(identifier)
    assert decision.promoted and decision.missing_model_types == [ModelType.LSTM]

    # Nothing succeeded: the answer is a refusal naming the failures, and no pointer anywhere.
    wait_until(lambda: harness.decisions(doomed_id), 10, "the all-failed hash to be refused")
    (refusal,) = harness.decisions(doomed_id)
    assert refusal.decision is DecisionOutcome.REFUSED
    assert "no expected model type succeeded" in refusal.reason and "CUDA out of memory" in refusal.reason
    assert refusal.missing_model_types == [ModelType.GRU, ModelType.LSTM, ModelType.PROPHET]
    assert harness.history(doomed_id, doomed_hash) == []
    assert harness.selected(doomed_id) == []
    assert doomed_hash not in promotion.load_pending(harness.store, harness.topics.bucket)


def test_newer_config_hash_replaces_the_live_pointer(shared_run: tuple[Harness, EvaluatorProcess]) -> None:
    harness, _process = shared_run
    identifier = f"Site-{uuid.uuid4().hex[:6]}"
    promoted: list[str] = []
    for label in ("older", "newer"):
        config_hash = config_hash_for(label)
        # Every run exists before the first event: a slow MLflow must not let the promotion
        # timeout (3 s) decide without a type.
        runs = {
            t: harness.make_run(config_hash, identifier, t, rmse=0.2)
            for t in (ModelType.GRU, ModelType.LSTM, ModelType.PROPHET)
        }
        for model_type, run_id in runs.items():
            harness.publish(harness.event(config_hash, identifier, model_type, run_id), config_hash)
        harness.wait_consumed()
        promoted.append(config_hash)
        live = promotion.load_current_pointer(harness.store, harness.topics.bucket, identifier)
        assert live is not None and live.config_hash == config_hash
    assert [len(harness.history(identifier, h)) for h in promoted] == [1, 1]
    assert [m["config_hash"] for m in harness.selected(identifier)] == promoted
    assert [d.config_hash for d in harness.decisions(identifier)] == promoted
    global_live = promotion.load_current_pointer(harness.store, harness.topics.bucket, None)
    assert global_live is not None and global_live.config_hash == promoted[-1]


def test_promotion_cut_short_after_the_decision_write_is_finished_not_redone(
    shared_run: tuple[Harness, EvaluatorProcess],
) -> None:
    harness, process = shared_run
    config_hash, identifier = config_hash_for("resume"), f"Site-{uuid.uuid4().hex[:6]}"
    runs = {
        t: harness.make_run(config_hash, identifier, t, rmse=0.2) for t in (ModelType.GRU, ModelType.LSTM)
    }
    prophet = harness.make_run(config_hash, identifier, ModelType.PROPHET, rmse=0.1)

    # What a crash right after the decision leaves: a decision object, no live pointer, no message.
    # Its scoreboard has every run, as a real decision's has: none of them is a late result.
    def figures(rmse: float) -> dict[str, float]:
        return {
            "val_rmse": rmse,
            "val_mae": rmse * 0.8,
            "val_mse": rmse * rmse,
            "val_rmse_down": rmse * 100,
            "val_rmse_up": rmse * 50,
            "baseline_val_rmse": 1.0,
            "baseline_val_rmse_down": 100.0,
            "baseline_val_rmse_up": 50.0,
        }

    winner = Candidate(ModelType.PROPHET, prophet, "NonML", 1, figures(0.1))
    others = [Candidate(t, run_id, "Default", 0, figures(0.2)) for t, run_id in runs.items()]
    decided = build_decision(
        identifier=identifier,
        config_hash=config_hash,
        selection=select([winner, *others]),
        weights=WEIGHTS,
        skill_gate=True,
    )
    assert decided.pointer is not None
    promotion.write_decision(harness.store, harness.topics.bucket, decided)

    for _ in range(2):
        harness.publish(
            harness.event(config_hash, identifier, ModelType.GRU, runs[ModelType.GRU]), config_hash
        )
    harness.wait_consumed()

    assert harness.stored_decisions(identifier, config_hash) == [decided]
    assert len(harness.history(identifier, config_hash)) == 1
    messages = harness.selected(identifier)
    assert [m["event_id"] for m in messages] == [decided.pointer.event_id], process.tail()
    assert [d.event_id for d in harness.decisions(identifier)] == [decided.event_id]
    live = promotion.load_current_pointer(harness.store, harness.topics.bucket, identifier)
    assert live == decided.pointer
    assert promotion.is_published(harness.store, harness.topics.bucket, decided)


def test_refusal_is_published_with_its_checks_and_nothing_goes_to_model_selected(
    shared_run: tuple[Harness, EvaluatorProcess],
) -> None:
    harness, process = shared_run
    config_hash, identifier = config_hash_for("gate"), f"Site-{uuid.uuid4().hex[:6]}"
    runs = {
        # Half persistence's error on the 11-KPI mean and on `down`, but worse on `up` (30 vs 20).
        ModelType.GRU: harness.make_run(
            config_hash, identifier, ModelType.GRU, rmse=0.2, baseline_rmse=0.4, up=30.0
        ),
        # Worse than persistence on everything.
        ModelType.LSTM: harness.make_run(
            config_hash, identifier, ModelType.LSTM, rmse=0.5, baseline_rmse=0.4
        ),
        # Superb on test, but never measured on validation: it cannot be ranked.
        ModelType.PROPHET: harness.make_run(
            config_hash, identifier, ModelType.PROPHET, rmse=0.5, test_rmse=0.01, validation=False
        ),
    }
    for model_type, run_id in runs.items():
        harness.publish(harness.event(config_hash, identifier, model_type, run_id), config_hash)
    harness.wait_consumed()

    (decision,) = harness.decisions(identifier)
    assert decision.decision is DecisionOutcome.REFUSED, process.tail()
    assert (decision.model_type, decision.run_id, decision.pointer) == (None, None, None)
    assert decision.config_hash == config_hash and decision.skill_gate
    checks = {(c.model_type, c.name): c for c in decision.checks}
    up = checks[(ModelType.GRU, "val_rmse_up")]
    assert (up.value, up.baseline, up.passed) == (30.0, 20.0, False)
    assert checks[(ModelType.GRU, "val_rmse_down")].passed and checks[(ModelType.GRU, "val_rmse")].passed
    assert not any(c.passed for c in decision.checks if c.model_type is not ModelType.GRU)
    assert checks[(ModelType.PROPHET, "score")].value is None
    assert "val_rmse_up 30 not below persistence 20" in decision.reason
    assert "lacks finite val_rmse, val_mae, val_mse" in decision.reason
    board = decision.scoreboard
    assert [e.model_type for e in board] == [ModelType.GRU, ModelType.LSTM, ModelType.PROPHET]
    assert (board[2].score, board[2].test_rmse) == (None, 0.01)
    # Nothing promoted anywhere; the refusal is in the history.
    assert harness.selected(identifier) == []
    assert harness.history(identifier, config_hash) == []
    assert promotion.load_current_pointer(harness.store, harness.topics.bucket, identifier) is None
    assert harness.stored_decisions(identifier, config_hash) == [decision]
    # A run without validation figures is refused, not dead-lettered.
    assert not [d for d in harness.dead_letters() if config_hash in str(d["payload"])]
    assert "promotion refused" in process.tail(200)

    # The refusal is the answer for this config hash: redelivery decides nothing again.
    harness.publish(harness.event(config_hash, identifier, ModelType.GRU, runs[ModelType.GRU]), config_hash)
    harness.wait_consumed()
    assert [d.event_id for d in harness.decisions(identifier)] == [decision.event_id]
    assert len(harness.stored_decisions(identifier, config_hash)) == 1


def test_run_whose_model_files_are_gone_is_left_out_and_the_best_loadable_one_wins(
    shared_run: tuple[Harness, EvaluatorProcess],
) -> None:
    harness, process = shared_run
    config_hash, identifier = config_hash_for("gone"), f"Site-{uuid.uuid4().hex[:6]}"
    # GRU scores best, but MLflow lists it while the object store holds none of its files.
    runs = {
        ModelType.GRU: harness.make_run(config_hash, identifier, ModelType.GRU, rmse=0.1, model_files=False),
        ModelType.LSTM: harness.make_run(config_hash, identifier, ModelType.LSTM, rmse=0.2),
        ModelType.PROPHET: harness.make_run(config_hash, identifier, ModelType.PROPHET, rmse=0.3),
    }
    events = [harness.event(config_hash, identifier, t, run_id) for t, run_id in runs.items()]
    for event in events:
        harness.publish(event, config_hash)
    harness.wait_consumed()

    wait_until(lambda: harness.decisions(identifier), 20, "a decision after the promotion timeout")
    (decision,) = harness.decisions(identifier)
    gru = runs[ModelType.GRU]
    assert decision.promoted and decision.run_id == runs[ModelType.LSTM], process.tail()
    # Every type reported, yet the evaluator waited out the timeout for GRU to be trained again.
    assert (decision.timestamp - events[0].created_at).total_seconds() >= 3.0
    assert decision.missing_model_types == [ModelType.GRU]
    assert f"run {gru} lacks its model artifacts GRU/MLmodel" in decision.reason
    assert "GRU/artifacts/model/state_dict.pt" in decision.reason
    assert gru not in {entry.run_id for entry in decision.scoreboard}
    failed = [(c.model_type, c.name) for c in decision.checks if not c.passed]
    assert failed == [(ModelType.GRU, "model_artifacts")]
    assert decision.pointer is not None and decision.pointer.note is not None and gru in decision.pointer.note
    warnings = [
        r
        for r in process.log_records()
        if r.get("msg") == "run lacks its model artifacts; it cannot be promoted" and r.get("run_id") == gru
    ]
    assert warnings and {r["level"] for r in warnings} == {"WARNING"}
    assert "GRU/MLmodel" in warnings[-1]["missing"] and gru in str(warnings[-1]["reason"])


def test_unknown_model_type_and_missing_run_go_to_dlq_without_crash(
    shared_run: tuple[Harness, EvaluatorProcess],
) -> None:
    harness, process = shared_run
    config_hash, identifier = config_hash_for("dlq"), f"Site-{uuid.uuid4().hex[:6]}"
    unknown_type = harness.event(config_hash, identifier, ModelType.GRU, uuid.uuid4().hex).model_dump(
        mode="json"
    )
    unknown_type["model_type"] = "XGBOOST"
    harness.publish(json.dumps(unknown_type).encode(), config_hash)
    missing_run = harness.event(config_hash, identifier, ModelType.GRU, uuid.uuid4().hex)
    harness.publish(missing_run, config_hash)
    harness.wait_consumed()

    letters = [json.loads(str(d["payload"])) for d in harness.dead_letters()]
    assert unknown_type["event_id"] in [p["event_id"] for p in letters]
    assert missing_run.event_id in [p["event_id"] for p in letters]
    assert process.proc is not None and process.proc.poll() is None
    assert process.probe("/readyz")[0] == 200
    assert process.probe("/healthz") == (200, {"status": "ok", "service": "evaluator", "consuming": True})
    assert harness.history(identifier, config_hash) == []


def test_kill_between_second_and_third_event_still_promotes_once(
    stack: StackConfig,
    service_env: dict[str, str],
    object_store: ObjectStore,
    tmp_path: Path,
) -> None:
    topics = make_topics(stack, object_store)
    harness = Harness(stack, object_store, topics)
    # A short session timeout lets the restarted member take over the dead one's partitions fast.
    env = evaluator_env(service_env, topics, KAFKA_SESSION_TIMEOUT_MS="3000")
    config_hash, identifier = config_hash_for("restart"), f"Site-{uuid.uuid4().hex[:6]}"
    # The third trainer finishes while the evaluator is down: its run exists only after the kill.
    runs = {
        ModelType.GRU: harness.make_run(config_hash, identifier, ModelType.GRU, rmse=0.1),
        ModelType.LSTM: harness.make_run(config_hash, identifier, ModelType.LSTM, rmse=0.2),
    }

    first = EvaluatorProcess(env, tmp_path / "first.log")
    try:
        first.start_ready()
        for model_type in (ModelType.GRU, ModelType.LSTM, ModelType.GRU):
            harness.publish(harness.event(config_hash, identifier, model_type, runs[model_type]), config_hash)
        harness.wait_consumed()
        first.kill()
    finally:
        first.stop()
    assert harness.history(identifier, config_hash) == []
    assert harness.selected(identifier) == []
    runs[ModelType.PROPHET] = harness.make_run(config_hash, identifier, ModelType.PROPHET, rmse=0.3)

    second = EvaluatorProcess(env, tmp_path / "second.log")
    try:
        second.start_ready()
        for model_type in (ModelType.PROPHET, ModelType.GRU, ModelType.LSTM, ModelType.PROPHET):
            harness.publish(harness.event(config_hash, identifier, model_type, runs[model_type]), config_hash)
        harness.wait_consumed()
        assert len(harness.history(identifier, config_hash)) == 1, second.tail()
        (message,) = harness.selected(identifier)
        assert message["run_id"] == runs[ModelType.GRU]
        (decision,) = harness.decisions(identifier)
        assert decision.promoted and decision.run_id == runs[ModelType.GRU]
    finally:
        assert second.stop() == 0, second.tail()
