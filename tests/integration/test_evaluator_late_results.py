"""A model type that never reports does not hold the station back, and a late one still counts.

The real evaluator process against the real broker, S3 server and MLflow server (harness of
test_evaluator.py). One expected type never reports: after PROMOTION_TIMEOUT_S, counted from the
first result of the config hash, the evaluator decides among the others and names the missing
type. When the missing type reports later it is scored: promoted if it beats the champion,
recorded as a refusal if not; the decision history keeps both decisions, and a redelivery of any
event decides nothing more.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from flts_cli.stack import StackConfig
from shared import promotion
from shared.events import DecisionOutcome, ModelType, PromotionPointer
from shared.scoring import DEFAULT_WEIGHTS as WEIGHTS
from shared.scoring import Candidate, build_decision, select
from shared.storage import ObjectStore
from tests.helpers.waiting import wait_until
from tests.integration.test_evaluator import (
    EvaluatorProcess,
    Harness,
    config_hash_for,
    evaluator_env,
    make_topics,
)

TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def late_run(
    stack: StackConfig,
    service_env: dict[str, str],
    object_store: ObjectStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Harness, EvaluatorProcess]]:
    topics = make_topics(stack, object_store)
    process = EvaluatorProcess(
        evaluator_env(service_env, topics, PROMOTION_TIMEOUT_S=f"{TIMEOUT_S:g}"),
        tmp_path_factory.mktemp("evaluator-late") / "evaluator.log",
    )
    try:
        process.start_ready()
        yield Harness(stack, object_store, topics), process
    finally:
        assert process.stop() == 0, process.tail()


def _decide_without_lstm(
    harness: Harness, process: EvaluatorProcess, gru_rmse: float
) -> tuple[str, str, dict[ModelType, str]]:
    """GRU and PROPHET succeed, LSTM never says a word; wait for the timeout's promotion."""
    config_hash, identifier = config_hash_for("silent"), f"Site-{uuid.uuid4().hex[:6]}"
    runs = {
        ModelType.GRU: harness.make_run(config_hash, identifier, ModelType.GRU, rmse=gru_rmse),
        ModelType.PROPHET: harness.make_run(config_hash, identifier, ModelType.PROPHET, rmse=0.4),
    }
    first = harness.event(config_hash, identifier, ModelType.GRU, runs[ModelType.GRU])
    harness.publish(first, config_hash)
    harness.publish(
        harness.event(config_hash, identifier, ModelType.PROPHET, runs[ModelType.PROPHET]), config_hash
    )
    harness.wait_consumed()

    wait_until(lambda: harness.decisions(identifier), 30, "a decision after the promotion timeout")
    (decision,) = harness.decisions(identifier)
    assert decision.promoted, process.tail()
    assert decision.run_id == runs[ModelType.GRU]
    assert decision.missing_model_types == [ModelType.LSTM]
    assert "never reported: LSTM" in decision.reason
    # Not before PROMOTION_TIMEOUT_S counted from the first result of the hash.
    assert (decision.timestamp - first.created_at).total_seconds() >= TIMEOUT_S
    (message,) = harness.selected(identifier)
    pointer = PromotionPointer.model_validate(message)
    assert pointer.run_id == runs[ModelType.GRU] and pointer.missing_model_types == [ModelType.LSTM]
    assert pointer.note is not None and "never reported: LSTM" in pointer.note
    assert config_hash not in promotion.load_pending(harness.store, harness.topics.bucket)
    return config_hash, identifier, runs


def test_silent_type_is_named_and_a_better_late_result_replaces_the_champion(
    late_run: tuple[Harness, EvaluatorProcess],
) -> None:
    harness, process = late_run
    config_hash, identifier, runs = _decide_without_lstm(harness, process, gru_rmse=0.3)

    # LSTM reports at last, better than GRU; the event is delivered twice.
    runs[ModelType.LSTM] = harness.make_run(config_hash, identifier, ModelType.LSTM, rmse=0.1)
    late_event = harness.event(config_hash, identifier, ModelType.LSTM, runs[ModelType.LSTM])
    harness.publish(late_event, config_hash)
    harness.publish(late_event, config_hash)
    harness.wait_consumed()

    first, second = harness.decisions(identifier)
    assert second.decision is DecisionOutcome.PROMOTED, process.tail()
    assert (second.model_type, second.run_id) == (ModelType.LSTM, runs[ModelType.LSTM])
    assert second.missing_model_types == []
    assert "late result: LSTM run" in second.reason
    assert f"replaces the champion GRU run {runs[ModelType.GRU][:8]}" in second.reason
    assert {e.run_id for e in second.scoreboard} == set(runs.values())
    # The history keeps both decisions, and both promotions.
    assert harness.stored_decisions(identifier, config_hash) == [first, second]
    assert len(harness.history(identifier, config_hash)) == 2
    assert [m["run_id"] for m in harness.selected(identifier)] == [runs[ModelType.GRU], runs[ModelType.LSTM]]
    live = promotion.load_current_pointer(harness.store, harness.topics.bucket, identifier)
    assert live is not None and live.run_id == runs[ModelType.LSTM]
    version = harness.client.get_model_version_by_alias(f"flts-{identifier}", "champion")
    assert version.run_id == runs[ModelType.LSTM]
    in_force = promotion.latest_decision(harness.store, harness.topics.bucket, identifier, config_hash)
    assert in_force == second

    # Redeliveries of every event, early and late, decide nothing more.
    for model_type, run_id in runs.items():
        harness.publish(harness.event(config_hash, identifier, model_type, run_id), config_hash)
    harness.wait_consumed()
    assert [d.event_id for d in harness.decisions(identifier)] == [first.event_id, second.event_id]
    assert len(harness.stored_decisions(identifier, config_hash)) == 2


def test_late_result_that_loses_to_the_champion_is_recorded_and_the_champion_stays(
    late_run: tuple[Harness, EvaluatorProcess],
) -> None:
    harness, process = late_run
    config_hash, identifier, runs = _decide_without_lstm(harness, process, gru_rmse=0.2)

    runs[ModelType.LSTM] = harness.make_run(config_hash, identifier, ModelType.LSTM, rmse=0.3)
    harness.publish(harness.event(config_hash, identifier, ModelType.LSTM, runs[ModelType.LSTM]), config_hash)
    harness.wait_consumed()

    first, second = harness.decisions(identifier)
    assert first.promoted and first.run_id == runs[ModelType.GRU]
    assert second.decision is DecisionOutcome.REFUSED, process.tail()
    assert (second.run_id, second.pointer) == (None, None)
    assert f"LSTM run {runs[ModelType.LSTM][:8]}" in second.reason
    assert "not better than the champion GRU run" in second.reason
    assert [e.model_type for e in second.scoreboard] == [ModelType.GRU, ModelType.LSTM, ModelType.PROPHET]
    assert harness.stored_decisions(identifier, config_hash) == [first, second]
    # Nothing moved: one promotion, GRU live, and the decision in force is still GRU's.
    assert len(harness.history(identifier, config_hash)) == 1
    assert [m["run_id"] for m in harness.selected(identifier)] == [runs[ModelType.GRU]]
    live = promotion.load_current_pointer(harness.store, harness.topics.bucket, identifier)
    assert live is not None and live.run_id == runs[ModelType.GRU]
    in_force = promotion.latest_decision(harness.store, harness.topics.bucket, identifier, config_hash)
    assert in_force == first


def test_each_decision_is_marked_published_on_its_own_and_the_old_single_marker_still_counts(
    object_store: ObjectStore,
) -> None:
    bucket = f"model-promotion-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(bucket)
    config_hash, identifier = config_hash_for("markers"), f"Site-{uuid.uuid4().hex[:6]}"
    figures = {"val_rmse": 0.2, "val_mae": 0.1, "val_mse": 0.04}
    first = build_decision(
        identifier=identifier,
        config_hash=config_hash,
        selection=select([Candidate(ModelType.GRU, "run-gru", "Default", 1, figures)], gate=False),
        weights=WEIGHTS,
        skill_gate=False,
    )
    promotion.write_decision(object_store, bucket, first)
    assert not promotion.is_published(object_store, bucket, first)
    # What the evaluator wrote before a hash could have several decisions: one `published.json`.
    object_store.put_json(
        bucket, promotion.legacy_published_key(identifier, config_hash), {"event_id": first.event_id}
    )
    assert promotion.is_published(object_store, bucket, first)

    later = first.model_copy(
        update={"event_id": uuid.uuid4().hex, "timestamp": first.timestamp + timedelta(minutes=5)}
    )
    promotion.write_decision(object_store, bucket, later)
    assert not promotion.is_published(object_store, bucket, later), "the old marker names the first only"
    promotion.mark_published(object_store, bucket, later, ["promotion-decisions"])
    assert promotion.is_published(object_store, bucket, later)
    assert promotion.load_decisions(object_store, bucket, identifier, config_hash) == [first, later]
