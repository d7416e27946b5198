"""Selection rules: validation decides (score, ranking, tie-break, the gate), test only reports."""

from __future__ import annotations

import math

import pytest

from eval_container.settings import EvaluatorSettings
from shared.events import DecisionOutcome, ModelType
from shared.scoring import (
    DEFAULT_WEIGHTS,
    Candidate,
    build_decision,
    gate_checks,
    latest_per_type,
    missing_metrics,
    rank,
    score,
    select,
)
from shared.settings import SettingsError, load_settings

BASE_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
}
CONFIG_HASH = "cd" * 32


def candidate(
    model_type: ModelType,
    rmse: float,
    mae: float,
    mse: float,
    start_time: int = 1_000,
    run_id: str | None = None,
    baseline: float | None = 1.0,
    down: float = 0.5,
    up: float = 0.5,
    test: tuple[float, float, float] | None = None,
) -> Candidate:
    """A run whose validation figures are rmse/mae/mse (and down/up against a persistence of 1.0)."""
    metrics = {"val_rmse": rmse, "val_mae": mae, "val_mse": mse, "val_rmse_down": down, "val_rmse_up": up}
    metrics |= {"baseline_val_rmse_down": 1.0, "baseline_val_rmse_up": 1.0}
    if baseline is not None:
        metrics["baseline_val_rmse"] = baseline
    test_rmse, test_mae, test_mse = test if test is not None else (rmse, mae, mse)
    metrics |= {"test_rmse": test_rmse, "test_mae": test_mae, "test_mse": test_mse}
    return Candidate(
        model_type=model_type,
        run_id=run_id or f"{model_type.value.lower()}-{start_time}",
        experiment="NonML" if model_type is ModelType.PROPHET else "Default",
        start_time=start_time,
        metrics=metrics,
    )


def test_score_is_the_weighted_sum_of_validation_rmse_mae_mse() -> None:
    metrics = {"val_rmse": 0.2, "val_mae": 0.1, "val_mse": 0.04, "test_rmse": 9.0}
    assert score(metrics) == pytest.approx(0.5 * 0.2 + 0.3 * 0.1 + 0.2 * 0.04)
    assert score(metrics, {"rmse": 1.0, "mae": 0.0, "mse": 0.0}) == pytest.approx(0.2)


def test_score_refuses_missing_or_non_finite_metrics() -> None:
    with pytest.raises(ValueError, match="val_mse"):
        score({"val_rmse": 0.2, "val_mae": 0.1, "test_mse": 0.01})
    with pytest.raises(ValueError, match="val_rmse"):
        score({"val_rmse": math.nan, "val_mae": 0.1, "val_mse": 0.1})
    assert missing_metrics({"val_rmse": 1.0, "val_mae": math.inf}) == ["val_mae", "val_mse"]


def test_lowest_score_wins_and_scoreboard_is_best_first() -> None:
    board = rank(
        [
            candidate(ModelType.GRU, 0.30, 0.20, 0.09),
            candidate(ModelType.LSTM, 0.10, 0.08, 0.01),
            candidate(ModelType.PROPHET, 0.50, 0.40, 0.25),
        ]
    )
    assert [e.model_type for e in board] == [ModelType.LSTM, ModelType.GRU, ModelType.PROPHET]
    scores = [e.score for e in board]
    assert None not in scores and scores == sorted(s for s in scores if s is not None)
    assert board[0].score == pytest.approx(0.5 * 0.10 + 0.3 * 0.08 + 0.2 * 0.01)


def test_ranking_is_on_validation_so_a_candidate_better_on_test_but_worse_on_validation_loses() -> None:
    better_on_test = candidate(ModelType.GRU, 0.30, 0.20, 0.09, test=(0.01, 0.01, 0.0001))
    better_on_val = candidate(ModelType.LSTM, 0.10, 0.08, 0.01, test=(0.90, 0.80, 0.81))

    selection = select([better_on_test, better_on_val])

    assert selection.winner == better_on_val
    assert [e.model_type for e in selection.scoreboard] == [ModelType.LSTM, ModelType.GRU]
    # The test figures travel on the scoreboard for the report, and change nothing.
    assert selection.scoreboard[1].test_rmse == 0.01 and selection.scoreboard[1].val_rmse == 0.30


def test_weights_change_the_winner() -> None:
    # GRU has the lower RMSE, LSTM the lower MAE: the weights decide.
    gru = candidate(ModelType.GRU, 0.10, 0.50, 0.01)
    lstm = candidate(ModelType.LSTM, 0.30, 0.10, 0.09)
    assert rank([gru, lstm], {"rmse": 1.0, "mae": 0.0, "mse": 0.0})[0].model_type is ModelType.GRU
    assert rank([gru, lstm], {"rmse": 0.0, "mae": 1.0, "mse": 0.0})[0].model_type is ModelType.LSTM


def test_exact_tie_goes_to_the_newest_run() -> None:
    older = candidate(ModelType.GRU, 0.2, 0.1, 0.04, start_time=1_000)
    newer = candidate(ModelType.LSTM, 0.2, 0.1, 0.04, start_time=2_000)
    assert rank([older, newer])[0].run_id == newer.run_id
    assert rank([newer, older])[0].run_id == newer.run_id


def test_tie_within_float_noise_still_goes_to_the_newest_run() -> None:
    # 0.1 + 0.2 != 0.3 in floats; such noise must not decide a promotion.
    older = candidate(ModelType.GRU, 0.3, 0.1, 0.04, start_time=1_000)
    newer = candidate(ModelType.LSTM, 0.1 + 0.2, 0.1, 0.04, start_time=2_000)
    assert score(older.metrics) != score(newer.metrics)
    assert rank([older, newer])[0].run_id == newer.run_id


def test_a_clearly_better_older_run_beats_a_newer_one() -> None:
    older = candidate(ModelType.GRU, 0.1, 0.1, 0.01, start_time=1_000)
    newer = candidate(ModelType.LSTM, 0.1001, 0.1, 0.01, start_time=2_000)
    assert rank([older, newer])[0].run_id == older.run_id


def test_only_the_latest_run_of_each_type_competes() -> None:
    old_gru = candidate(ModelType.GRU, 0.01, 0.01, 0.0001, start_time=1_000)
    new_gru = candidate(ModelType.GRU, 0.40, 0.30, 0.16, start_time=3_000)
    lstm = candidate(ModelType.LSTM, 0.20, 0.10, 0.04, start_time=2_000)
    latest = latest_per_type([old_gru, lstm, new_gru])
    assert latest == {ModelType.GRU: new_gru, ModelType.LSTM: lstm}
    assert rank(latest.values())[0].model_type is ModelType.LSTM


def test_gate_refuses_a_candidate_better_on_the_kpi_mean_but_worse_than_persistence_on_up() -> None:
    # Far better than persistence on the 11-KPI mean, and on `down`, yet worse on uplink traffic.
    lopsided = candidate(ModelType.GRU, 0.05, 0.04, 0.0025, baseline=0.20, down=0.5, up=1.2)

    checks = {c.name: c for c in gate_checks(lopsided)}
    selection = select([lopsided])

    assert checks["val_rmse"].passed and checks["val_rmse_down"].passed
    assert not checks["val_rmse_up"].passed
    assert (checks["val_rmse_up"].value, checks["val_rmse_up"].baseline) == (1.2, 1.0)
    assert selection.winner is None
    assert "val_rmse_up 1.2 not below persistence 1" in selection.reason


def test_winner_is_the_best_scoring_candidate_that_passes_the_gate() -> None:
    best_but_worse_on_down = candidate(ModelType.LSTM, 0.05, 0.04, 0.0025, down=1.5)
    second = candidate(ModelType.GRU, 0.10, 0.08, 0.01)
    third = candidate(ModelType.PROPHET, 0.20, 0.10, 0.04)

    selection = select([third, best_but_worse_on_down, second])

    assert selection.winner == second
    assert selection.scoreboard[0].run_id == best_but_worse_on_down.run_id
    assert "better-scoring candidates refused" in selection.reason and "val_rmse_down 1.5" in selection.reason
    # Every candidate's checks are recorded, best-scoring first.
    assert [c.run_id for c in selection.checks][::3] == [e.run_id for e in selection.scoreboard]
    assert len(selection.checks) == 9


def test_gate_is_strict_a_candidate_equal_to_persistence_is_refused() -> None:
    at_persistence = candidate(ModelType.GRU, 1.0, 0.8, 1.0, baseline=1.0, down=1.0, up=1.0)
    selection = select([at_persistence])
    assert selection.winner is None
    assert all(not c.passed for c in selection.checks)


def test_candidate_missing_validation_metrics_is_refused_with_that_reason() -> None:
    trained_before_validation = Candidate(
        ModelType.PROPHET,
        "prophet-1",
        "NonML",
        1_000,
        {"test_rmse": 0.01, "test_mae": 0.01, "test_mse": 0.0001, "baseline_test_rmse": 1.0},
    )
    selection = select([trained_before_validation])
    assert selection.winner is None
    assert selection.scoreboard[0].score is None
    assert "lacks finite val_rmse, val_mae, val_mse" in selection.reason
    assert {c.name for c in selection.checks} == {"val_rmse_down", "val_rmse_up", "val_rmse", "score"}
    assert not any(c.passed for c in selection.checks)


def test_unscored_candidate_never_wins_even_with_the_gate_off() -> None:
    unscored = Candidate(ModelType.GRU, "gru-9", "Default", 9_000, {"val_rmse": 0.01})
    scored_but_worse_than_persistence = candidate(ModelType.LSTM, 2.0, 1.0, 4.0, baseline=1.0, up=3.0)

    selection = select([unscored, scored_but_worse_than_persistence], gate=False)

    assert selection.winner == scored_but_worse_than_persistence
    assert [e.run_id for e in selection.scoreboard] == ["lstm-1000", "gru-9"]
    assert "skill gate off" in selection.reason
    assert select([unscored], gate=False).winner is None


def test_decision_of_a_refusal_has_no_winner_and_of_a_promotion_carries_the_pointer() -> None:
    good = candidate(ModelType.GRU, 0.1, 0.08, 0.01)
    bad = candidate(ModelType.LSTM, 0.1, 0.08, 0.01, up=2.0, start_time=2_000)

    refused = build_decision(
        identifier="PobleSec",
        config_hash=CONFIG_HASH,
        selection=select([bad]),
        weights=DEFAULT_WEIGHTS,
        skill_gate=True,
    )
    promoted = build_decision(
        identifier="PobleSec",
        config_hash=CONFIG_HASH,
        selection=select([good, bad]),
        weights=DEFAULT_WEIGHTS,
        skill_gate=True,
        note="decided after the timeout",
    )

    assert refused.decision is DecisionOutcome.REFUSED and not refused.promoted
    assert (refused.model_type, refused.run_id, refused.pointer) == (None, None, None)
    assert promoted.decision is DecisionOutcome.PROMOTED
    assert promoted.pointer is not None and promoted.pointer.run_id == good.run_id == promoted.run_id
    assert promoted.pointer.timestamp == promoted.timestamp
    assert (promoted.pointer.rmse, promoted.pointer.mae, promoted.pointer.mse) == (0.1, 0.08, 0.01)
    assert promoted.reason.endswith("; decided after the timeout")
    assert promoted.pointer.note == "decided after the timeout"


def test_settings_parse_expected_types_weights_and_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EXPECTED_MODEL_TYPES", " gru, LSTM ,gru")
    monkeypatch.setenv("SKILL_GATE", "false")
    monkeypatch.setenv("W_MSE", "0")
    settings = load_settings(EvaluatorSettings)
    assert settings.EXPECTED_MODEL_TYPES == [ModelType.GRU, ModelType.LSTM]
    assert settings.SKILL_GATE is False
    assert settings.weights == {"rmse": 0.5, "mae": 0.3, "mse": 0.0}
    assert settings.PROMOTION_TIMEOUT_S == 180.0


def test_settings_defaults_match_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in (
        "EXPECTED_MODEL_TYPES",
        "SKILL_GATE",
        "W_RMSE",
        "W_MAE",
        "W_MSE",
        "TOPIC_PROMOTION_DECISIONS",
    ):
        monkeypatch.delenv(key, raising=False)
    settings = load_settings(EvaluatorSettings)
    assert settings.EXPECTED_MODEL_TYPES == [ModelType.GRU, ModelType.LSTM, ModelType.PROPHET]
    assert settings.weights == DEFAULT_WEIGHTS
    assert settings.SKILL_GATE is True
    assert settings.TOPIC_PROMOTION_DECISIONS == "promotion-decisions"


def test_settings_name_an_unknown_model_type(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EXPECTED_MODEL_TYPES", "GRU,XGBOOST")
    with pytest.raises(SettingsError) as info:
        load_settings(EvaluatorSettings)
    assert "EXPECTED_MODEL_TYPES" in str(info.value)
