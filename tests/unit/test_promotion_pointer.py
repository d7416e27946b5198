"""The promotion pointer's contents, decision records, and the object layout of the promotion bucket."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared import promotion
from shared.events import DecisionOutcome, ModelType, PromotionDecision, PromotionPointer
from shared.scoring import Candidate, build_pointer, rank

CONFIG_HASH = "ab" * 32
WEIGHTS = {"rmse": 0.5, "mae": 0.3, "mse": 0.2}


def candidates() -> list[Candidate]:
    return [
        Candidate(
            ModelType.GRU,
            "run-gru",
            "Default",
            1_000,
            {"val_rmse": 0.2, "val_mae": 0.1, "val_mse": 0.04, "test_rmse": 0.3, "test_mae": 0.2},
        ),
        Candidate(
            ModelType.PROPHET,
            "run-prophet",
            "NonML",
            2_000,
            {"val_rmse": 0.4, "val_mae": 0.3, "val_mse": 0.16},
        ),
    ]


def pointer(**overrides: object) -> PromotionPointer:
    runs = candidates()
    board = rank(runs, WEIGHTS)
    winner = next(c for c in runs if c.run_id == board[0].run_id)
    kwargs: dict[str, object] = {
        "identifier": "PobleSec",
        "config_hash": CONFIG_HASH,
        "winner": winner,
        "scoreboard": board,
        "weights": WEIGHTS,
        **overrides,
    }
    return build_pointer(**kwargs)  # type: ignore[arg-type]


def test_pointer_names_the_winner_its_validation_metrics_and_model_uri() -> None:
    p = pointer()
    assert p.identifier == "PobleSec"
    assert p.config_hash == CONFIG_HASH
    assert p.run_id == "run-gru"
    assert p.model_type is ModelType.GRU
    assert p.experiment == "Default"
    assert p.model_uri == "runs:/run-gru/GRU"
    assert (p.rmse, p.mae, p.mse) == (0.2, 0.1, 0.04)
    assert p.score == pytest.approx(0.5 * 0.2 + 0.3 * 0.1 + 0.2 * 0.04)
    assert p.weights == WEIGHTS
    assert [e.run_id for e in p.scoreboard] == ["run-gru", "run-prophet"]
    assert (p.scoreboard[0].test_rmse, p.scoreboard[0].test_mae, p.scoreboard[0].test_mse) == (0.3, 0.2, None)
    assert p.missing_model_types == []
    assert p.note is None


def test_prophet_winner_points_at_the_prophet_folder_in_nonml() -> None:
    runs = candidates()
    board = rank(runs, {"rmse": 0.0, "mae": 0.0, "mse": 0.0})  # all tie: newest (PROPHET) wins
    p = build_pointer(
        identifier="ElBorn", config_hash=CONFIG_HASH, winner=runs[1], scoreboard=board, weights=WEIGHTS
    )
    assert board[0].run_id == "run-prophet"
    assert (p.model_uri, p.experiment) == ("runs:/run-prophet/PROPHET", "NonML")


def test_pointer_records_missing_types_and_note_after_timeout() -> None:
    p = pointer(missing_model_types=[ModelType.PROPHET, ModelType.LSTM], note="LSTM failed")
    assert p.missing_model_types == [ModelType.LSTM, ModelType.PROPHET]
    assert p.note == "LSTM failed"


def test_pointer_refuses_a_winner_missing_from_the_scoreboard() -> None:
    runs = candidates()
    with pytest.raises(ValueError, match="not on the scoreboard"):
        build_pointer(
            identifier="x",
            config_hash=CONFIG_HASH,
            winner=runs[0],
            scoreboard=rank(runs[1:]),
            weights=WEIGHTS,
        )


def test_pointer_survives_a_json_round_trip_with_the_design_fields() -> None:
    p = pointer()
    raw = json.loads(p.model_dump_json())
    for field in (
        "identifier",
        "config_hash",
        "run_id",
        "model_type",
        "experiment",
        "model_uri",
        "rmse",
        "mae",
        "mse",
        "score",
        "weights",
        "scoreboard",
        "timestamp",
    ):
        assert field in raw
    assert PromotionPointer.model_validate(raw) == p


def test_object_keys_follow_the_design_layout() -> None:
    stamp = datetime(2026, 11, 30, 15, 4, 5, 123456, tzinfo=UTC)
    assert promotion.current_key("PobleSec") == "PobleSec/current.json"
    assert promotion.current_key(None) == "current.json"
    key = promotion.history_key("PobleSec", CONFIG_HASH, stamp)
    assert key == f"PobleSec/{CONFIG_HASH}/promotion-20261130T150405123456Z.json"
    assert promotion.is_history_key(key)
    assert not promotion.is_history_key(promotion.published_key("PobleSec", CONFIG_HASH, stamp))
    assert not promotion.is_decision_key(promotion.published_key("PobleSec", CONFIG_HASH, stamp))
    assert not promotion.is_history_key(promotion.current_key("PobleSec"))


def test_history_keys_sort_in_promotion_order() -> None:
    start = datetime(2026, 1, 1, 23, 59, 59, 999999, tzinfo=UTC)
    stamps = [start + timedelta(microseconds=n) for n in (0, 1, 10**6, 10**9)]
    keys = [promotion.history_key("x", CONFIG_HASH, s) for s in stamps]
    assert sorted(reversed(keys)) == keys


def test_decision_keys_sit_beside_the_promotion_history_and_are_told_apart() -> None:
    stamp = datetime(2026, 11, 30, 15, 4, 5, 123456, tzinfo=UTC)
    key = promotion.decision_key("PobleSec", CONFIG_HASH, stamp)
    assert key == f"PobleSec/{CONFIG_HASH}/decision-20261130T150405123456Z.json"
    assert promotion.is_decision_key(key) and not promotion.is_history_key(key)
    assert not promotion.is_decision_key(promotion.history_key("PobleSec", CONFIG_HASH, stamp))


def test_pending_state_round_trips_through_json() -> None:
    state = promotion.PendingHash(
        config_hash=CONFIG_HASH,
        identifier="LesCorts",
        first_seen=datetime(2026, 11, 30, tzinfo=UTC),
        failed={"LSTM": "out of memory"},
    )
    again = promotion.PendingHash.model_validate(json.loads(state.model_dump_json()))
    assert again == state
    assert promotion.pending_key(CONFIG_HASH) == f"_evaluator/pending/{CONFIG_HASH}.json"


def test_each_decision_of_a_hash_has_its_own_published_marker() -> None:
    first = datetime(2026, 11, 30, 15, 4, 5, 123456, tzinfo=UTC)
    later = first + timedelta(minutes=4)
    keys = {promotion.published_key("PobleSec", CONFIG_HASH, s) for s in (first, later)}
    assert keys == {
        f"PobleSec/{CONFIG_HASH}/published-20261130T150405123456Z.json",
        f"PobleSec/{CONFIG_HASH}/published-20261130T150805123456Z.json",
    }


def _decision(outcome: DecisionOutcome, minutes: int) -> PromotionDecision:
    stamp = datetime(2026, 11, 30, tzinfo=UTC) + timedelta(minutes=minutes)
    p = pointer(timestamp=stamp)
    promoted = outcome is DecisionOutcome.PROMOTED
    return PromotionDecision(
        identifier=p.identifier,
        config_hash=CONFIG_HASH,
        decision=outcome,
        model_type=p.model_type if promoted else None,
        run_id=p.run_id if promoted else None,
        pointer=p if promoted else None,
        reason="test",
        timestamp=stamp,
    )


def test_the_decision_in_force_is_the_latest_promotion_not_a_later_refusal_of_a_late_result() -> None:
    promoted = _decision(DecisionOutcome.PROMOTED, 0)
    late_refusal = _decision(DecisionOutcome.REFUSED, 5)
    late_promotion = _decision(DecisionOutcome.PROMOTED, 9)
    first_refusal = _decision(DecisionOutcome.REFUSED, 1)
    assert promotion.decision_in_force([promoted, late_refusal]) == promoted
    assert promotion.decision_in_force([promoted, late_refusal, late_promotion]) == late_promotion
    assert promotion.decision_in_force([first_refusal, late_refusal]) == late_refusal
    assert promotion.decision_in_force([]) is None
