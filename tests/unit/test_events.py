"""Event models: the envelope, the wire form, and what each message refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared.events import (
    SCHEMA_VERSION,
    DataClaim,
    DeadLetter,
    DecisionOutcome,
    GateCheck,
    ModelType,
    PromotionDecision,
    PromotionPointer,
    ScoreboardEntry,
    TrainingEvent,
    TrainingStatus,
    dlq_topic,
    model_dict,
    to_json_bytes,
)

HASH = "0123456789abcdef" * 4


def claim(**changes: object) -> DataClaim:
    fields: dict[str, object] = {
        "bucket": "processed-data",
        "object": f"{HASH}/train.parquet",
        "test_object": f"{HASH}/test.parquet",
        "meta_object": f"{HASH}/meta.json",
        "size": 1234,
        "rows": 15927,
        "config_hash": HASH,
        "identifier": "PobleSec",
        "dataset": "PobleSec",
    }
    fields.update(changes)
    return DataClaim(**fields)  # type: ignore[arg-type]


def test_every_message_gets_version_unique_event_id_and_aware_timestamp() -> None:
    first, second = claim(), claim()

    assert first.v == SCHEMA_VERSION == 1
    assert first.event_id and first.event_id != second.event_id
    assert first.created_at.tzinfo is not None
    wire = json.loads(to_json_bytes(first))
    assert {"v", "event_id", "created_at"} <= wire.keys()


def test_claim_survives_the_wire_unchanged() -> None:
    original = claim()

    assert DataClaim.model_validate_json(to_json_bytes(original)) == original
    assert model_dict(original)["config_hash"] == HASH


def test_unknown_fields_are_ignored_so_producers_can_add_fields() -> None:
    wire = {**model_dict(claim()), "added_in_a_later_release": [1, 2]}

    assert DataClaim.model_validate(wire).identifier == "PobleSec"


def test_unknown_schema_version_is_refused() -> None:
    with pytest.raises(ValidationError, match="v"):
        DataClaim.model_validate({**model_dict(claim()), "v": 2})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("config_hash", "not-a-sha256"),
        ("config_hash", HASH.upper()),
        ("rows", 0),
        ("size", -1),
        ("identifier", ""),
        ("bucket", ""),
    ],
)
def test_claim_refuses_values_outside_the_contract(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        claim(**{field: value})


def test_events_are_immutable() -> None:
    with pytest.raises(ValidationError):
        claim().rows = 3


@pytest.mark.parametrize(
    ("status", "model_type", "operation"),
    [
        (TrainingStatus.RUNNING, ModelType.GRU, "Training Started: GRU"),
        (TrainingStatus.SUCCESS, ModelType.LSTM, "Trained: LSTM"),
        (TrainingStatus.FAILED, ModelType.PROPHET, "Training Failed: PROPHET"),
    ],
)
def test_training_operation_names_match_the_original_system(
    status: TrainingStatus, model_type: ModelType, operation: str
) -> None:
    assert TrainingEvent.operation_for(status, model_type) == operation


def test_training_event_round_trips_with_metrics_and_refuses_unknown_model_types() -> None:
    event = TrainingEvent(
        operation=TrainingEvent.operation_for(TrainingStatus.SUCCESS, ModelType.GRU),
        status=TrainingStatus.SUCCESS,
        model_type=ModelType.GRU,
        experiment="Default",
        run_name="GRU",
        run_id="abc123",
        config_hash=HASH,
        identifier="PobleSec",
        metrics={"test_rmse": 0.05, "baseline_test_rmse": 0.07},
    )

    back = TrainingEvent.model_validate_json(to_json_bytes(event))
    assert back == event
    assert json.loads(to_json_bytes(event))["status"] == "SUCCESS"
    with pytest.raises(ValidationError, match="model_type"):
        TrainingEvent.model_validate({**model_dict(event), "model_type": "XGBOOST"})


def scoreboard_entry() -> ScoreboardEntry:
    return ScoreboardEntry(
        model_type=ModelType.LSTM,
        run_id="r1",
        score=0.067,
        val_rmse=0.1,
        val_mae=0.05,
        val_mse=0.01,
        test_rmse=0.12,
        test_mae=0.06,
        test_mse=0.0144,
    )


def pointer() -> PromotionPointer:
    return PromotionPointer(
        identifier="PobleSec",
        config_hash=HASH,
        run_id="r1",
        model_type=ModelType.LSTM,
        experiment="Default",
        model_uri="runs:/r1/LSTM",
        rmse=0.1,
        mae=0.05,
        mse=0.01,
        score=0.067,
        weights={"rmse": 0.5, "mae": 0.3, "mse": 0.2},
        scoreboard=[scoreboard_entry()],
        timestamp=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
    )


def test_promotion_pointer_round_trips_with_its_scoreboard() -> None:
    original = pointer()
    back = PromotionPointer.model_validate_json(to_json_bytes(original))
    assert back == original
    assert back.scoreboard[0].model_type is ModelType.LSTM
    assert (back.scoreboard[0].val_rmse, back.scoreboard[0].test_rmse) == (0.1, 0.12)


def check(name: str, value: float | None, baseline: float | None) -> GateCheck:
    passed = value is not None and baseline is not None and value < baseline
    return GateCheck(
        name=name, model_type=ModelType.LSTM, run_id="r1", value=value, baseline=baseline, passed=passed
    )


def test_refusal_decision_round_trips_with_its_checks_and_scoreboard() -> None:
    refusal = PromotionDecision(
        identifier="PobleSec",
        config_hash=HASH,
        decision=DecisionOutcome.REFUSED,
        reason="no candidate beats persistence on validation: LSTM run r1: val_rmse_up 2 not below 1",
        checks=[
            check("val_rmse_down", 0.5, 1.0),
            check("val_rmse_up", 2.0, 1.0),
            check("val_rmse", None, 0.1),
        ],
        scoreboard=[scoreboard_entry()],
        weights={"rmse": 0.5, "mae": 0.3, "mse": 0.2},
        timestamp=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
    )

    wire = json.loads(to_json_bytes(refusal))
    back = PromotionDecision.model_validate(wire)

    assert back == refusal
    assert wire["decision"] == "refused" and wire["run_id"] is None and wire["pointer"] is None
    assert [c["passed"] for c in wire["checks"]] == [True, False, False]
    assert {"name", "model_type", "run_id", "value", "baseline", "passed"} == set(wire["checks"][0])
    assert wire["scoreboard"][0]["val_rmse"] == 0.1 and wire["scoreboard"][0]["test_rmse"] == 0.12


def test_promotion_decision_round_trips_with_the_pointer_of_its_winner() -> None:
    promoted = PromotionDecision(
        identifier="PobleSec",
        config_hash=HASH,
        decision=DecisionOutcome.PROMOTED,
        model_type=ModelType.LSTM,
        run_id="r1",
        reason="LSTM run r1 has the best validation score",
        checks=[check("val_rmse", 0.1, 0.2)],
        pointer=pointer(),
    )
    back = PromotionDecision.model_validate_json(to_json_bytes(promoted))
    assert back == promoted and back.promoted
    assert back.pointer is not None and back.pointer.run_id == "r1"


@pytest.mark.parametrize(
    "changes",
    [
        {"decision": "promoted"},  # a promotion without its winner
        {"decision": "promoted", "model_type": "LSTM", "run_id": "other"},  # winner is not the pointer's
        {"run_id": "r1"},  # a refusal naming a winner
        {"decision": "maybe"},
    ],
)
def test_decision_refuses_a_winner_that_does_not_match_the_outcome(changes: dict[str, object]) -> None:
    base: dict[str, object] = {
        "identifier": "PobleSec",
        "config_hash": HASH,
        "decision": "refused",
        "reason": "no candidate",
    }
    if changes.get("run_id") == "other":
        base["pointer"] = model_dict(pointer())
    with pytest.raises(ValidationError):
        PromotionDecision.model_validate({**base, **changes})


def test_dead_letter_names_the_dlq_topic_and_keeps_the_payload_text() -> None:
    letter = DeadLetter(
        error="body is not valid JSON",
        payload="{oops",
        topic="training-data",
        partition=2,
        offset=7,
        service="train-gru",
    )

    assert dlq_topic("training-data") == "DLQ-training-data"
    back = DeadLetter.model_validate_json(to_json_bytes(letter))
    assert (back.payload, back.partition, back.offset) == ("{oops", 2, 7)
